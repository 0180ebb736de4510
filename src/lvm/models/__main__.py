"""Print the model table (name | params | description) for the README:

    python -m lvm.models --dim 768 --context 100 [--params params.yaml]
"""

import argparse

from . import MODEL_NAMES, _REGISTRY, count_parameters, create_model


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lvm.models", description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=768, help="vector dimension D")
    ap.add_argument("--context", type=int, default=100, help="context length L")
    ap.add_argument("--params", help="params.yaml whose `model:` section overrides the defaults")
    args = ap.parse_args(argv)
    model_params = {}
    if args.params:
        import yaml

        with open(args.params) as f:
            model_params = (yaml.safe_load(f) or {}).get("model", {}) or {}
    print(f"| model | params (D={args.dim}, L={args.context}) | architecture |")
    print("|---|---:|---|")
    for name in MODEL_NAMES:
        model = create_model(name, input_dim=args.dim, context_length=args.context, **model_params)
        print(f"| `{name}` | {count_parameters(model) / 1e6:.2f}M | {_REGISTRY[name].DESCRIPTION} |")


if __name__ == "__main__":
    main()
