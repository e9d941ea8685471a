"""The project's folders that the code reads at run time, wherever nightshift is installed.

In a checkout (or an editable install) they sit at the top of the source tree; a wheel (a worker's image) carries a
copy inside the package, `pipelines/_project/` (setup.py puts it there):

    expectations/          the Great Expectations suites (pipelines.data.validation)
    dags/                  the DAG file (Airflow's dags_folder, `nightshift retrain`)
    infra/elasticsearch/   the index templates (`nightshift es install-template`)
"""

from __future__ import annotations

from pathlib import Path

from pipelines.config import PROJECT_ROOT

FOLDERS = ("expectations", "dags", "infra/elasticsearch")
INSTALLED = Path(__file__).resolve().parent / "_project"


def project_dir(name: str) -> Path:
    """The folder `name` (one of FOLDERS): the source tree's when running from one (it has pyproject.toml), else the
    installed package's copy.

    Raises:
        ValueError: `name` is not one of FOLDERS.
        FileNotFoundError: neither place has it (a wheel built without setup.py's build step).
    """
    if name not in FOLDERS:
        raise ValueError(f"project folder {name!r}: expected one of {', '.join(FOLDERS)}")
    for root in ((PROJECT_ROOT,) if (PROJECT_ROOT / "pyproject.toml").is_file() else ()) + (INSTALLED,):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"project folder {name!r} is neither in a source tree ({PROJECT_ROOT}) nor in the package ({INSTALLED})")
