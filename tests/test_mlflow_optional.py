"""Without --mlflow, MLflow is never imported: the jobs run where it is not installed. Apart from tests/test_tracking.py,
which skips itself when MLflow is missing, so that this check runs either way."""

import os
import subprocess
import sys

from tests.conftest import ROOT

# Any attempt to import mlflow fails in the child, installed or not: an import that a missing package would turn
# into a crash is caught here too, not only one that happens to succeed.
REFUSE_MLFLOW = """
import sys
class RefuseMlflow:
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("mlflow imported without --mlflow")
sys.meta_path.insert(0, RefuseMlflow())
"""


def test_without_the_flag_mlflow_is_never_imported():
    code = (REFUSE_MLFLOW +
            "from jobs import bench, cli, forget, sweep, train, unlearn\n"
            "from jobs.common import check_mlflow, track\n"
            "check_mlflow(None, 'x')\n"
            "track(None, 'x', [object()])\n"
            "assert not [name for name in sys.modules if name.split('.')[0] == 'mlflow']\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
