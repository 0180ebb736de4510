"""The HTML page `dvc plots show` fills, with Vega, Vega-Lite and Vega-Embed inline (no CDN).

    python -m lvm.offline_plots              # rewrite .dvc/offline_plots.html
    python -m lvm.offline_plots --check      # exit 1 if the committed page is not this bundle

DVC's default page loads the three libraries from a CDN, so offline it stays blank. `.dvc/config`
sets `plots.html_template = offline_plots.html` (DVC reads it relative to `.dvc/`), so the plain
`dvc plots show` uses this page. The scripts are the bundle that the pinned `vl-convert-python`
package builds from the copies it ships (`vl_convert.javascript_bundle`); the page is committed so
that a clone renders plots before any build step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / ".dvc" / "offline_plots.html"
# DVC writes Vega-Lite v5 specs (`$schema: .../vega-lite/v5.json`): bundle the newest 5.x it has
VEGA_LITE = "5.21"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega, Vega-Lite {vega_lite} and Vega-Embed inline, bundled by vl-convert-python {vl_convert}
         (python -m lvm.offline_plots): this page needs no network. It has no placeholder for DVC's
         CDN script tags, on purpose. -->
    <script type="text/javascript">
// an IIFE: the bundle's top-level names stay private, so they cannot clash with the plots' own
// `var spec` scripts; it publishes window.vegaEmbed, window.vega and window.vegaLite
(function () {{
{bundle}
}})();
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def page() -> str:
    import vl_convert

    # The bundle's own `{`/`}` must survive DVC's placeholder replacement: DVC replaces only the
    # literal strings {plot_divs}, {scripts} and {refresh_tag} (dvc_render.html.HTML.embed), which
    # minified JavaScript does not contain (checked below).
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:
            raise RuntimeError(f"the Vega bundle contains DVC's placeholder {placeholder}")
    return PAGE.format(bundle=bundle, vega_lite=VEGA_LITE, vl_convert=vl_convert.__version__)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvm.offline_plots", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the page is stale")
    parser.add_argument("--out", default=str(TEMPLATE))
    args = parser.parse_args(argv)
    out = Path(args.out)
    text = page()
    if args.check:
        if not out.is_file() or out.read_text(encoding="utf8") != text:
            print(f"error: {out} is missing or not the bundle of the installed vl-convert-python; "
                  "run `python -m lvm.offline_plots`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf8")
    print(f"wrote {out} ({len(text):,} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
