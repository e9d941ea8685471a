"""The one base class of nightshift's errors (here, in the shipped package, so the code inside every version
can raise it without importing anything outside itself; `pipelines.errors` re-exports it)."""


class NightshiftError(Exception):
    """An error nightshift raises on purpose: bad input, a bad setting, data that cannot train, a registry that
    says no. The message names the record, field or setting. The CLI prints it as one line and exits 2; any other
    exception is a bug (or the machine, such as CUDA out of memory) and shows its traceback."""


class InputError(NightshiftError, ValueError):
    """Input nightshift cannot use: a file, a URI, an argument, a model's own files. The message names it."""


class MissingInput(NightshiftError, FileNotFoundError):
    """A file or folder named by an argument or a setting is not there."""


def invalid(message: str) -> Exception:
    """MLflow's invalid-parameter error, for a pyfunc's bad input: a scoring server answers it with 400 and the message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
