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


# Tests marked here rather than in their file: the reward server's tests share a server process that loads the demo
# checkpoint (tens of seconds to start), and the torchrun one starts two more.
SLOW_FIXTURES = {"server"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or "under_torchrun" in item.name:
            item.add_marker(pytest.mark.slow)
