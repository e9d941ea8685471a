"""The build step that pyproject.toml cannot say: the folders a worker reads at run time, which live at the top of the
source tree, go inside the wheel under `pipelines/_project/` (`pipelines.resources.project_dir` finds them in either
place). Everything else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# the folder in the wheel (under pipelines/_project/) -> the folder in the source tree
BUNDLED = {"expectations": "expectations", "dags": "dags", "infra/elasticsearch": "infra/elasticsearch"}
SKIP = {"__pycache__", "uncommitted"}  # byte code; Great Expectations' local results and Data Docs


class BuildWithProjectFolders(build_py):
    def run(self):
        super().run()
        for target, source in BUNDLED.items():
            for file in sorted(Path(source).rglob("*")):
                if file.is_file() and not SKIP.intersection(file.parts):
                    dest = Path(self.build_lib, "pipelines", "_project", target, file.relative_to(source))
                    self.mkpath(str(dest.parent))
                    self.copy_file(str(file), str(dest))


setup(cmdclass={"build_py": BuildWithProjectFolders})
