"""Stage export_ctx100: article-bounded context windows, split by article, stored compactly."""
from __future__ import annotations

import time

from lvm.entry import stage_main
from lvm.data import export_windows, load_corpus
from lvm.io import atomic_outputs, log_run, write_json

METADATA = "metadata_ctx100.json"  # inside the output directory, beside the splits


def run(p: dict, out_dir: str, metadata: str | None = None) -> dict:
    """Windows of p's vectors into out_dir (dvc.yaml's ${windows}): train/val/test.npz and METADATA."""
    data, export = p["data"], p["export"]
    metadata = metadata or f"{out_dir}/{METADATA}"
    t0 = time.perf_counter()
    corpus = load_corpus(data["vectors"], data["trust_pickle"], data["stream_block"])
    for note in corpus.notes:
        print(note)
    # the splits and their metadata change together or not at all: a failure anywhere (disk full
    # while writing val.npz) leaves every previous output as it was
    with atomic_outputs():
        meta = export_windows(corpus, out_dir, data["context_length"], export["overlap"],
                              export["split"], export["seed"], export["test_stride"],
                              export["min_target_position"], export["val_stride"], export["folds"], export["fold"])
        write_json(metadata, meta)  # no timing in it: a rerun on the same inputs writes the same bytes
    s = meta["splits"]
    print(f"export: L={meta['context_length']} stride={meta['stride']} first target "
          f"{meta['first_target_position']} D={meta['vector_dim']}; windows "
          f"train {s['train']['windows']} / val {s['val']['windows']} / test {s['test']['windows']} from "
          f"{s['train']['articles']}/{s['val']['articles']}/{s['test']['articles']} articles; "
          f"{meta['articles_skipped_too_short']} articles too short")
    log_run("export_ctx100", {"seconds": round(time.perf_counter() - t0, 2), "windows": meta["total_windows"],
                              "source_file": meta["source_file"]})
    return meta


main = stage_main(run, __doc__, data="out_dir")


if __name__ == "__main__":
    main()
