"""The `switchyard-producer` distribution: `switchyard_producer`, which holds Switchyard's
own `app` package as `switchyard_producer._core` (copied from ../app when the wheel is built;
the `app` package imports itself only relatively, so it works under either name), and so
installs beside an application whose own top-level package is called `app`."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

APP = Path(__file__).resolve().parent.parent / "app"
SKIP = ("static", "__pycache__")  # the dashboard's files: a producer serves no pages


class BuildWithCore(build_py):
    def run(self):
        super().run()
        core = Path(self.build_lib) / "switchyard_producer" / "_core"
        shutil.rmtree(core, ignore_errors=True)
        shutil.copytree(APP, core, ignore=shutil.ignore_patterns(*SKIP, "*.pyc"))


setup(cmdclass={"build_py": BuildWithCore})
