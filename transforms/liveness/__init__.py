"""The nightly refresh: is each URL of a snapshot still alive, changed or dead (docs/refresh.md).

- `verdicts`: the rules, as pure functions: one URL's observations and history -> its verdict.
- `plans`: how one URL is checked tonight (conditional GET, HEAD then GET, a file look-up).
- `checks`: the Beam stages: ReadSnapshots, CheckUrls, FindPlaceholders, Judge, the table writers.
- `history`: reading the previous nights and writing tonight's, never losing one silently.
- `summary`: REFRESH_OUT/summary.json.
- `night_output`: REFRESH_OUT written aside, put into place once the night's books balance.
- `refresh_settings`: the settings refused rather than repaired (rule numbers, a night before its snapshot).
"""

__all__ = ["checks", "history", "night_output", "plans", "refresh_settings", "summary", "verdicts"]
