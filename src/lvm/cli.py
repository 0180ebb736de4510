"""The `lvm` command:

    lvm inspect --model models/memory/best.pt --article 17      # decoded predictions, see lvm.inspect
    lvm inspect                                                 # lists the held-out articles
"""
from __future__ import annotations

import argparse

from lvm.config import load_params
from lvm.entry import stage


@stage
def main(argv=None):
    parser = argparse.ArgumentParser(prog="lvm", description="latent vector models: look inside")
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="decode predictions for windows of a held-out article to text",
                         description="For windows of one article: the last context chunk, the true next "
                         "chunk, and the corpus chunks nearest to each model's prediction and to copy-last.")
    ins.add_argument("--model", action="append", default=[], metavar="CKPT",
                     help="checkpoint, e.g. models/memory/best.pt (repeatable; copy-last is always shown)")
    ins.add_argument("--article", type=int, help="article id (omit to list the split's articles)")
    ins.add_argument("--windows", type=int, default=3, help="windows of the article, evenly spaced (3)")
    ins.add_argument("--k", type=int, default=5, help="nearest corpus chunks per prediction (5)")
    ins.add_argument("--split", choices=("test", "val", "train"), default="test")
    ins.add_argument("--data-dir", help="the windows' directory (default: dvc.yaml's vars: windows)")
    ins.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    from lvm.inspect import inspect_command  # (imports torch: not needed for --help)

    print(inspect_command(load_params(args.params), args.model, args.article, args.windows, args.k,
                          args.split, args.data_dir))


if __name__ == "__main__":
    main()
