import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
SHARED_DATA = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The same resolvers examples/train_reward_model.py registers.
OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    # Two tiers: `pytest -m "not slow"` is the daily loop; CI runs everything.
    config.addinivalue_line("markers", "slow: takes tens of seconds or more (multi-process training, real models)")
