"""Print the model table (name | params | description) for the README:

    python -m lvm.models --dim 768 --context 100 [--params params.yaml]
"""

import argparse

from lvm.config import load_params
from lvm.entry import stage

from . import MODEL_NAMES, _REGISTRY, count_parameters, create_model


@stage  # a bad --params file: one error line
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lvm.models", description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=768, help="vector dimension D")
    ap.add_argument("--context", type=int, default=100, help="context length L")
    ap.add_argument("--params", default="params.yaml", help="the params file whose `model:` section "
                    "sizes the models (default ./params.yaml)")
    args = ap.parse_args(argv)
    model_params = load_params(args.params)["model"]
    print(f"| model | params (D={args.dim}, L={args.context}) | architecture |")
    print("|---|---:|---|")
    for name in MODEL_NAMES:
        # (train.normalize adds buffers, no parameters: "none" counts the same)
        model = create_model(name, input_dim=args.dim, context_length=args.context, normalize="none",
                             **model_params)
        print(f"| `{name}` | {count_parameters(model) / 1e6:.2f}M | {_REGISTRY[name].DESCRIPTION} |")


if __name__ == "__main__":
    main()
