"""The reward server against the clients that call it in practice, not requests built by hand: NeMo-Aligner
0.7.0's own PPO reward client (``RemoteGPTRMClient``, through pytriton's ``FuturesModelClient``), its SteerLM
annotation request, pytriton's ``ModelClient`` and ``tritonclient.http``. They run in a subprocess on top of the
overlay scripts/client_env.sh builds (pytriton is not in requirements/cpu.lock; the script says why), and their
answers are compared with the offline scorer (the demo checkpoint) or the stand-in's closed form."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.serving_fake import FakeScorer
from tests.test_rewardbench import ROOT
from tests.test_server import CONV, MULTI, ServerProcess, demo_checkpoint, demo_scorer, serve_command, steerlm_text
from tests.test_server_limits import InProcess

pytestmark = pytest.mark.slow  # a client environment, a subprocess per client, and for some the demo model
SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


@pytest.fixture(scope="module")
def overlay():
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "client_env.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        message = f"scripts/client_env.sh failed:\n{proc.stderr[-3000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)  # e.g. no package index reachable
    return proc.stdout.strip().splitlines()[-1]


def drive(overlay, scenario, port, **spec):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([overlay, str(ROOT)]), OMP_NUM_THREADS="1")
    env.pop("NEMO_HS2_SERVER_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "tests.clients_driver"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, input=json.dumps({"scenario": scenario, "port": port,
                                                                    "model": "reward_model", **spec}))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{scenario} client failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    srv = ServerProcess([sys.executable, *serve_command(demo_checkpoint(tmp_path_factory),
                                                       "server.max_queue_delay_ms=20")])
    yield srv.port
    srv.stop()


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return demo_scorer(tmp_path_factory)


def test_nemo_aligner_ppo_client_alone_and_batched(overlay, demo_server, scorer):
    """RemoteGPTRMClient.infer_rm (NeMo-Aligner's PPO actor calls exactly this): token rows of three lengths padded
    with 0 into one batch, and each row alone, give the same rewards, equal to the offline scorer's; a
    response_length beyond the padded width is refused with a message naming the row and the limit."""
    convs = [CONV, MULTI, SHORT]
    rows = [scorer.tokenize(c).tolist() for c in convs]
    assert len({len(r) for r in rows}) == 3
    got = drive(overlay, "ppo", demo_server, rows=rows, dist_port=29781)
    offline = [o["reward"] for o in scorer.score(convs)]
    assert np.asarray(got["batch"]).ravel() == pytest.approx(offline, abs=1e-5)
    assert np.asarray(got["alone"]).ravel() == pytest.approx(np.asarray(got["batch"]).ravel(), abs=1e-6)
    assert got["too_long"]["error_type"] == "PyTritonClientInferenceServerError"
    widest = int(np.argmax([len(r) for r in rows]))  # the first row whose length + 5 passes the padded width
    assert f"row {widest}: sequence_length {len(rows[widest]) + 5} outside 1..{len(rows[widest])} (the tokens' " \
           "width)" in got["too_long"]["error"]


def test_pytriton_model_client_and_tritonclient(overlay, demo_server, scorer):
    convs = [MULTI, SHORT]
    rows = [scorer.tokenize(c).tolist() for c in convs]
    offline = scorer.score(convs)
    got = drive(overlay, "pytriton_sync", demo_server, rows=rows)
    assert np.asarray(got["batch"]["rewards"]).ravel() == pytest.approx([o["reward"] for o in offline], abs=1e-5)
    np.testing.assert_allclose(got["batch"]["attributes"],
                               [[o["attributes"][a] for a in scorer.attributes] for o in offline], atol=1e-5)
    np.testing.assert_allclose([a["rewards"][0] for a in got["alone"]], got["batch"]["rewards"], atol=1e-6)
    got = drive(overlay, "tritonclient_http", demo_server, rows=rows,
                texts=[steerlm_text(c, scorer) for c in convs])
    assert got["live"] and got["ready"] and "error" not in got, got
    assert np.asarray(got["rewards"]).ravel() == pytest.approx([o["reward"] for o in offline], abs=1e-5)
    assert np.asarray(got["sentence_rewards"]).ravel() == pytest.approx([o["reward"] for o in offline], abs=1e-5)


def test_steerlm_annotation_request(overlay, demo_server, scorer):
    convs = [CONV, MULTI]
    got = drive(overlay, "steerlm", demo_server, texts=[steerlm_text(c, scorer) for c in convs], add_eos=False)
    assert np.asarray(got["rewards"]).ravel() == pytest.approx([o["reward"] for o in scorer.score(convs)], abs=1e-5)
    assert got["exceeded"] == [[[False]], [[False]]]


def test_attributes_output_mode_for_the_annotation_script(overlay):
    """server.rewards_output=attributes: "rewards" is [B, A], what attribute_annotate.py rounds into labels; with
    add_EOS the row ends in the tokenizer's EOS."""
    srv = InProcess({"rewards_output": "attributes"})
    try:
        texts = ["<extra_id_0>System\nBe brief.\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\nHello.\n",
                 "caf\u00e9 \U0001F600 au lait"]
        got = drive(overlay, "steerlm", srv.port, texts=texts, add_eos=True)
        want = [FakeScorer.expected(list(t.encode()) + [FakeScorer().model.tokenizer.eos_id]).tolist() for t in texts]
        np.testing.assert_allclose(got["rewards"], want, atol=1e-5)
    finally:
        srv.close()


def test_bearer_token_with_clients_that_can_send_one(overlay, monkeypatch):
    """tritonclient.http with Authorization: Bearer on every call, pytriton's ModelClient with its access_token
    (sent as triton-access-token on inference; its readiness and config calls carry none, and are open). Without
    the token: 401, raised by the client as its own exception."""
    monkeypatch.setenv("NEMO_HS2_SERVER_TOKEN", "s3cret")
    srv = InProcess()
    try:
        rows = [[1, 2, 3, 4], [5, 6]]
        want = [float(FakeScorer.expected(r) @ FakeScorer().weights) for r in rows]
        got = drive(overlay, "tritonclient_http", srv.port, rows=rows, texts=["hello"], token="s3cret")
        assert np.asarray(got["rewards"]).ravel() == pytest.approx(want, abs=1e-5)
        got = drive(overlay, "tritonclient_http", srv.port, rows=rows, texts=["hello"], token="wrong")
        assert got["status"] == "401" and "bearer token" in got["error"]
        got = drive(overlay, "pytriton_sync", srv.port, rows=rows, token="s3cret")
        assert np.asarray(got["batch"]["rewards"]).ravel() == pytest.approx(want, abs=1e-5)
        got = drive(overlay, "pytriton_sync", srv.port, rows=rows)  # NeMo-Aligner's clients send no token
        assert "bearer token" in got["batch"]["error"]
    finally:
        srv.close()
