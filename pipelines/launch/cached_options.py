"""Pipeline options whose views are made once (`CachedViewOptions`), for every job's pipeline."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["CachedViewOptions"]


class CachedViewOptions(PipelineOptions):
    """The job's pipeline options, whose view_as() builds each view once.

    Beam builds a view by running argparse over the whole command line again, and calls view_as
    (TypeOptions) two to four times for every transform it applies: with the ingest's ~220 leaf
    transforms that was ~0.8 s of CPU before the first row (py-spy, an empty manifest). Views share
    the options' values (`_all_options`), so a view made once stays current. Made with
    `options.view_as(CachedViewOptions)`; no options of its own.
    """

    def view_as(self, cls: type[PipelineOptions]) -> PipelineOptions:
        """The view of these options as `cls`, made on the first call and reused after.

        Args:
            cls: a PipelineOptions subclass.
        Returns:
            An instance of cls sharing these options' values.
        """
        cache = self.__dict__.get("_views")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_views", cache)  # PipelineOptions.__setattr__ takes option names only
        view = cache.get(cls)
        if view is None:
            view = cache[cls] = super().view_as(cls)
        return view
