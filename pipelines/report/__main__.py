"""`python -m pipelines.report OUT`: (re)write OUT/report.html (pipelines/report/html_report.py)."""

import sys

from pipelines.report.html_report import main

if __name__ == "__main__":
    sys.exit(main())
