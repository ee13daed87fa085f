import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
SHARED_DATA = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nemo_hs2.core.resolvers import register_resolvers  # noqa: E402

register_resolvers()  # the resolvers every entry point registers
os.environ.setdefault("OMP_NUM_THREADS", "1")


def data_config(name: str, *overrides: str):
    """``data=<name>`` as training composes it (its defaults list included), resolved and writable."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=[f"data={name}", *overrides])
    return OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))


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
