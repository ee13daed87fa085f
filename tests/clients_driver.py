"""The real clients of a reward server, called as their owners call them; run by tests/test_server_clients.py in the
overlay scripts/client_env.sh builds (pytriton 0.7.0, tritonclient 2.65 on top of .venv):

    PYTHONPATH=<overlay>:. .venv/bin/python -m tests.clients_driver < spec.json > results.json

``spec``: {"scenario": ..., "port": ..., ...}; the answer is JSON. Every rewards list is what the client returned,
unchanged; an error is the client's own exception type and message (what a PPO job would log).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def _error(e: BaseException) -> dict:
    return {"error_type": type(e).__name__, "error": str(e)}


def ppo(spec) -> dict:
    """NeMo-Aligner 0.7.0's PPO reward client itself: ``RemoteGPTRMClient.infer_rm(rollout_batch).result()``
    (nemo_aligner/models/nlp/gpt/reward_critic_clients.py), which pads ``response_tokens`` [B, T], sends them with
    ``response_lengths`` as ``sequence_lengths`` [B, 1] through ``HTTPCommunicator`` (a pytriton
    ``FuturesModelClient.infer_batch``) and reads ``rewards``. It runs inside a model-parallel group; here a
    one-process gloo group, with nemo_hs2's CPU stand-ins for the CUDA calls (``torch.cuda.current_device``)."""
    import torch
    from megatron.core import parallel_state
    from omegaconf import OmegaConf

    from nemo_hs2.megatron import compat

    compat.apply()
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{spec['dist_port']}", rank=0,
                                         world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    from nemo_aligner.models.nlp.gpt.reward_critic_clients import RemoteGPTRMClient

    client = RemoteGPTRMClient(OmegaConf.create({"reward_model": {"name": spec["model"], "ip": "127.0.0.1",
                                                                  "port": spec["port"]}, "pad_to_length": None}))

    def infer(rows, lengths=None):
        width = max(map(len, rows))
        tokens = torch.zeros((len(rows), width), dtype=torch.long)  # PPO pads generations with 0
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = torch.tensor(r)
        lengths = torch.tensor(lengths or [len(r) for r in rows])
        try:
            return client.infer_rm({"response_tokens": tokens, "response_lengths": lengths}).result().tolist()
        except Exception as e:  # noqa: BLE001 - report what the client raised
            return _error(e)

    out = {"batch": infer(spec["rows"]), "alone": [infer([r]) for r in spec["rows"]],
           "too_long": infer(spec["rows"], [len(r) + 5 for r in spec["rows"]])}
    client.communicator.close()
    return out


def _str_list2numpy(str_list):
    # NeMo-Aligner examples/nlp/data/steerlm/attribute_annotate.py (_str_list2numpy), as released with 0.7.0.
    str_ndarray = np.array(str_list)[..., np.newaxis]
    return np.char.encode(str_ndarray, "utf-8")


def steerlm(spec) -> dict:
    """NeMo-Aligner's SteerLM annotation request, as ``get_reward`` in examples/nlp/data/steerlm/
    attribute_annotate.py builds it (a script, not importable): each sentence alone as BYTES [1, 1] with add_EOS
    [1, 1], one ``FuturesModelClient.infer_batch`` each, ``rewards`` flattened per row (the attributes when the
    server runs with rewards_output=attributes) and ``exceeded``."""
    from pytriton.client import FuturesModelClient

    sentences = _str_list2numpy(spec["texts"])
    futures = []
    with FuturesModelClient(f"127.0.0.1:{spec['port']}", spec["model"]) as client:
        for sen in np.split(sentences, sentences.shape[0]):
            futures.append(client.infer_batch(sentences=sen, add_EOS=np.ones_like(sen, dtype=bool) * spec["add_eos"]))
    results = [f.result() for f in futures]
    return {"rewards": [r["rewards"].flatten().tolist() for r in results],
            "exceeded": [r["exceeded"].tolist() for r in results]}


def pytriton_sync(spec) -> dict:
    """pytriton's blocking ``ModelClient`` with token rows, alone and batched, optionally with its ``access_token``
    (sent as the ``triton-access-token`` header)."""
    from pytriton.client import ModelClient

    kwargs = {"access_token": spec["token"]} if spec.get("token") else {}
    out = {}
    with ModelClient(f"http://127.0.0.1:{spec['port']}", spec["model"], init_timeout_s=60, **kwargs) as client:
        def infer(rows):
            width = max(map(len, rows))
            tokens = np.zeros((len(rows), width), dtype=np.int64)
            for i, r in enumerate(rows):
                tokens[i, :len(r)] = r
            try:
                got = client.infer_batch(tokens=tokens, sequence_lengths=np.array([[len(r)] for r in rows]))
                return {k: v.tolist() for k, v in got.items()}
            except Exception as e:  # noqa: BLE001
                return _error(e)

        out["batch"] = infer(spec["rows"])
        out["alone"] = [infer([r]) for r in spec["rows"]]
    return out


def tritonclient_http(spec) -> dict:
    """``tritonclient.http`` itself, as a client that sets its own headers would: model config, then an inference
    with binary token inputs and one with JSON sentences, each with ``Authorization: Bearer``."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    headers = {"Authorization": f"Bearer {spec['token']}"} if spec.get("token") is not None else None
    client = http.InferenceServerClient(f"127.0.0.1:{spec['port']}")
    out = {"live": client.is_server_live(), "ready": client.is_model_ready(spec["model"])}
    try:
        out["config_max_batch_size"] = client.get_model_config(spec["model"], headers=headers)["max_batch_size"]
        rows = spec["rows"]
        tokens = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = r
        inputs = [http.InferInput("tokens", list(tokens.shape), "INT64"),
                  http.InferInput("sequence_lengths", [len(rows), 1], "INT64")]
        inputs[0].set_data_from_numpy(tokens, binary_data=True)
        inputs[1].set_data_from_numpy(np.array([[len(r)] for r in rows], dtype=np.int64), binary_data=True)
        result = client.infer(spec["model"], inputs, outputs=[http.InferRequestedOutput("rewards", binary_data=True),
                                                              http.InferRequestedOutput("attributes")],
                              headers=headers)
        out["rewards"] = result.as_numpy("rewards").tolist()
        out["attributes"] = result.as_numpy("attributes").tolist()
        sentences = http.InferInput("sentences", [len(spec["texts"]), 1], "BYTES")
        sentences.set_data_from_numpy(np.array([[t.encode()] for t in spec["texts"]], dtype=object), binary_data=False)
        out["sentence_rewards"] = client.infer(spec["model"], [sentences], headers=headers).as_numpy("rewards").tolist()
    except InferenceServerException as e:
        out.update(_error(e), status=e.status())
    client.close()
    return out


SCENARIOS = {"ppo": ppo, "steerlm": steerlm, "pytriton_sync": pytriton_sync, "tritonclient_http": tritonclient_http}

if __name__ == "__main__":
    spec = json.load(sys.stdin)
    result = SCENARIOS[spec["scenario"]](spec)
    sys.stdout.write("\n" + "RESULT " + json.dumps(result) + "\n")
