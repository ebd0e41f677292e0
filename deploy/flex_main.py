"""Flex Template launcher entry (the image's FLEX_TEMPLATE_PYTHON_PY_FILE).

Runs the job the image was built for (BEAM_JOB, set by the Dockerfile's JOB build argument)
with the template parameters mapped onto its own flags: pipelines/launch/flex_template.py.
"""

import sys

from pipelines.launch import flex_template

if __name__ == "__main__":
    sys.exit(flex_template.main())
