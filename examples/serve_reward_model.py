"""Serve a trained reward model over HTTP: NeMo-Aligner's reward-server interface plus per-attribute scores.

    python examples/serve_reward_model.py checkpoint=results/hs2_reward_model/checkpoints/hs2_reward_model.nemo
    curl -s localhost:5555/score -d '{"conversations": [[{"role": "user", "content": "Hi"},
                                                         {"role": "assistant", "content": "Hello!"}]]}'
    torchrun --nproc_per_node 8 examples/serve_reward_model.py trainer=gpu trainer.devices=8 \
        model.tensor_model_parallel_size=8 checkpoint=...

NeMo-Aligner's PPO / rejection-sampling jobs point at it with remote_rm.reward_model.{ip,port,name}; see
nemo_hs2/serving/ for the protocol and what is and is not compatible. Binds 127.0.0.1 unless server.host says
otherwise; the bearer token comes from $NEMO_HS2_SERVER_TOKEN or server.auth_token_file. Stops on SIGINT / SIGTERM;
exits with status 70 when the model loop stalls or dies.
"""

import signal
import sys
import threading

from nemo_hs2.cli.entry import hydra_entry


@hydra_entry("serve_reward_model", name="serve_reward_model")
def main(cfg):
    from nemo_hs2.core.rank import is_main_rank
    from nemo_hs2.evaluation.run import load_model, make_scorer
    from nemo_hs2.serving import EXIT_MODEL_FAILED, ModelLoopFailed, ServerConfig, TokenScorer, build_server

    server_cfg = ServerConfig.from_mapping(cfg.server)
    server_cfg.load_token()  # a missing token file fails here, before the model loads
    scorer = make_scorer(load_model(cfg), cfg)
    import torch

    distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    if not is_main_rank():
        # torchrun signals every rank; only rank 0 may decide to stop, or it would wait on a collective forever.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        TokenScorer(scorer, distributed).follow()  # runs rank 0's batches until rank 0 releases it
        return 0
    server = build_server(scorer, server_cfg, distributed).start_http()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    host, port = server.address
    info = server.service.info()
    print(f"nemo_hs2 reward server listening on http://{host}:{port} (model '{info['model_name']}', attributes "
          f"{info['attributes']}, max_length {info['max_length']}, overlength={info['overlength']}; requests can "
          f"add at most {info['memory_bound_mb']:g} MiB to this process's memory)", flush=True)
    try:
        server.serve(stop)  # the model runs in this thread, the one that built it
    except ModelLoopFailed as e:
        print(f"reward server failed: {e}", file=sys.stderr, flush=True)
        return EXIT_MODEL_FAILED
    print("reward server stopped", flush=True)
    return 0


if __name__ == "__main__":
    main()
