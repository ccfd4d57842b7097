"""CLI verbs for model files: `quants`, `download`, `models`, `gguf` (python -m qwenkit VERB -h)."""
from __future__ import annotations

import json

from qwenkit import hub

__all__ = ["add_cli"]


def _quants(args) -> int:
    headers = [h.strip() for h in args.header.split(",")] if args.header else False
    ql = hub.list_quants(args.repo, revision=args.revision, vram_gb=args.vram, ram_gb=args.ram,
                         headers=headers, endpoint=args.endpoint)
    if args.json:
        print(json.dumps([{"quant": q.name, "size": q.size, "files": [f.path for f in q.files],
                           "sha256": [f.sha256 for f in q.files], "revision": q.revision,
                           "fit": q.verdict.kind if q.verdict else None,
                           "verdict": q.verdict.text if q.verdict else None,
                           "info": q.info.to_dict() if q.info else None} for q in ql], indent=1))
        return 0
    where = " (offline: local copies only)" if hub.is_offline() else ""
    print(f"{args.repo}{where}")
    print(ql.table())
    for q in ql:
        if q.info is not None:
            print()
            print(q.info.summary())
    if args.vram is None:
        print("\n(add --vram GB [--ram GB] for a fit verdict)")
    return 0


def _download(args) -> int:
    if len(args.what) == 1:
        repo, quant = hub.DEFAULT_REPO, args.what[0]
    elif len(args.what) == 2:
        repo, quant = args.what
    else:
        raise SystemExit("usage: python -m qwenkit download [REPO] QUANT")
    m = hub.download(repo, quant, revision=args.revision, dest=args.dir, endpoint=args.endpoint,
                     progress=not args.no_progress, stall_timeout=args.stall_timeout, retries=args.retries)
    print(f"{m.name}: {m.state}, {m.size / hub.GiB:.2f} GiB" + (f", commit {m.revision}" if m.revision else ""))
    print(m.path)
    return 0


def _models(args) -> int:
    if args.remove:
        removed = hub.remove_model(args.remove, args.dir)
        for p in removed:
            print(f"removed {p}")
        return 0
    if args.verify:
        m = hub.verify_model(args.verify, args.dir, progress=not args.no_progress)
        print(f"{m.name}: {m.state} ({len(m.files)} file(s), SHA-256 checked)")
        return 0
    ms = hub.local_models(args.dir, include_hf_cache=not args.no_hf_cache)
    if args.json:
        print(json.dumps([{"name": m.name, "repo": m.repo, "path": str(m.path), "files": [str(f) for f in m.files],
                           "size": m.size, "state": m.state, "revision": m.revision} for m in ms], indent=1))
    else:
        print(f"models folder: {hub.models_dir(args.dir)}")
        print(hub.models_table(ms))
    return 0


def _gguf(args) -> int:
    from qwenkit.gguf_info import read_model_info
    info = read_model_info(args.path)
    if args.json:
        print(json.dumps(info.to_dict(tensors=args.tensors), indent=1))
        return 0
    print(info.summary())
    print(f"  integrity: ok ({info.file_size:,} bytes, tensor data ends at {info.tensor_data_end:,})")
    if args.tensors:
        for t in info.tensors:
            print(f"  {t.name:<40} {t.type_name:<6} {t.shape!s:<24} {t.nbytes:>14,}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("quants", help="list a repo's GGUF quants with sizes and a fit verdict",
                       description="List the GGUF quants of a hub repo (split files grouped), "
                                   "with a fit verdict for your GPU.")
    p.add_argument("repo", nargs="?", default=hub.DEFAULT_REPO, help=f"hub repo (default {hub.DEFAULT_REPO})")
    p.add_argument("--vram", type=float, help="GPU memory in GB (as sold: 16 for a 16 GB card)")
    p.add_argument("--ram", type=float, help="system RAM in GB (default: this machine's)")
    p.add_argument("--header", metavar="QUANT[,QUANT]",
                   help="also read these quants' GGUF headers over the network (a few MB each)")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--endpoint", help="hub URL (default HF_ENDPOINT or huggingface.co)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quants)

    p = sub.add_parser("download", help="download a quant: resumable, SHA-256 verified",
                       description="Download every file of a quant at a pinned commit: disk space checked "
                                   "first, resumes partial downloads, verifies SHA-256.")
    p.add_argument("what", nargs="+", metavar="[REPO] QUANT", help="repo (optional) and quant, e.g. Q4_K_M")
    p.add_argument("--revision", help="branch, tag or commit (default main, resolved to a commit)")
    p.add_argument("--dir", help="models folder (default $QWENKIT_MODELS or ~/.cache/qwenkit/models)")
    p.add_argument("--endpoint", help="hub URL (default HF_ENDPOINT or huggingface.co)")
    p.add_argument("--stall-timeout", type=float, default=60.0, help="seconds without data before retrying")
    p.add_argument("--retries", type=int, default=5, help="retries in a row without progress")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_download)

    p = sub.add_parser("models", help="list local models (quant, size, verification state); remove one",
                       description="Local GGUF models: the kit's models folder, partial downloads and "
                                   "huggingface_hub's cache.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--remove", metavar="NAME", help="delete a model: quant, file name or path")
    g.add_argument("--verify", metavar="NAME", help="hash a model again and compare with its SHA-256")
    p.add_argument("--dir", help="models folder (default $QWENKIT_MODELS or ~/.cache/qwenkit/models)")
    p.add_argument("--no-hf-cache", action="store_true", help="leave huggingface_hub's cache out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models)

    p = sub.add_parser("gguf", help="a GGUF file's header facts and integrity check",
                       description="Read a local GGUF header: layers, KV layers, experts, sizes; "
                                   "fails clearly on a truncated or corrupted file.")
    p.add_argument("path")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_gguf)
