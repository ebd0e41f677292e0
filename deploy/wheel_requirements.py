"""Print a wheel's runtime requirements (Requires-Dist without extras), one per line.

The Dockerfile builds a wheel from setup.py alone and installs these in a layer of their own, so
a code change rebuilds only the small layer of the package itself.

    python deploy/wheel_requirements.py dist/beam_image_datasets-0.1.0-py3-none-any.whl
"""

import email.parser
import sys
import zipfile


def requirements(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(wheel.read(name).decode("utf-8"))
    return [req for req in metadata.get_all("Requires-Dist") or [] if "extra" not in req.partition(";")[2]]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
