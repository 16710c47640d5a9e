from tests.models.helpers import one_thread  # noqa: F401  (a fixture the model tests use)
