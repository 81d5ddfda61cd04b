"""Shared by both test trees (`python/tests`, `tests`): the runner Beam's DirectRunner chooses."""

import pytest
from apache_beam.runners.portability import prism_runner


@pytest.fixture(scope="session", autouse=True)
def beams_python_runners():
    """Beam 2.77's DirectRunner first tries to run a pipeline on Prism, which it downloads from
    GitHub as it runs, and uses its Python runners (FnApiRunner, BundleBasedDirectRunner) only
    when that fails. The tests refuse Prism, so that they fetch nothing from the internet and run
    on the same runners on every machine, with or without network."""

    def refuse(self, pipeline, options):
        raise RuntimeError("InferBridge's tests run on Beam's Python runners, not Prism")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse)
        yield
