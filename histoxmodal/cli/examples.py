"""The examples that end each command's ``--help`` (argparse epilogs), kept apart from the options.

Keys are the command path after ``histoxmodal`` (``""`` is the top level, ``"bench her2st"`` a
nested one). A test walks every parser and fails on one without examples, so a new command
adds its lines here. Standard library only: imported on every start.
"""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "histoxmodal demo                                    # the whole path on generated data",
        "histoxmodal tile slides/ --out tiles/ -v",
        "histoxmodal train --list",
    ),
    "tile": (
        "histoxmodal tile slides/*.svs --out tiles/ --mpp-target 0.5 --workers 4",
        "histoxmodal tile B4.jpg --mpp 0.688 --out tiles/ --save-tiles   # 200 µm spot pitch",
        "histoxmodal tile slides/ --mpp-csv mpp.csv --out tiles/ --shard auto   # SLURM array",
    ),
    "mil": (
        "histoxmodal mil train feats/ --labels labels.csv --target KRAS --out mil_kras",
        "histoxmodal mil predict mil_kras new_feats/ --out calls.csv",
    ),
    "mil train": (
        "histoxmodal mil train feats/ --labels labels.csv --target KRAS --out mil_kras",
        "histoxmodal mil train feats/ --labels labels.csv --target KRAS --model mean --out m",
    ),
    "mil predict": (
        "histoxmodal mil predict mil_kras new_feats/ --out calls.csv",
        "histoxmodal mil predict mil_kras feats_a/ feats_b/ --out calls.csv -v",
    ),
    "demo": (
        "histoxmodal demo                                  # generated slides, ~3 min on a CPU",
        "histoxmodal demo --src ../shared/data/her2st --out demo_her2st",
        "histoxmodal demo --medical --patients 200 --max-epochs 2",
    ),
    "build": (
        "histoxmodal build --list",
        "histoxmodal build --recipe her2st --src ../shared/data/her2st --out her2st_paired",
        "histoxmodal build --recipe visium --src outs/ --image full_res.tif --out visium_paired",
        "histoxmodal build --recipe visium_hd --src hd_run/ --image hd_run/he.btf --pool-um 55 "
        "--out hd_paired",
    ),
    "export": (
        "histoxmodal export --data her2st_paired --to parquet --out pq/",
        "histoxmodal export --data her2st_paired --to hest --out hest/",
        "histoxmodal export --data her2st_paired --to spatialdata --out her2st.zarr",
    ),
    "train": (
        "histoxmodal train her2st_small --data her2st_paired --out runs/small",
        "histoxmodal train her2st_small --data her2st_paired --out runs/small --max-epochs 8 "
        "--resume",
        "histoxmodal train my.yaml --set optim.lr=3e-4 --print-config   # check, train nothing",
    ),
    "pretrain-genes": (
        "histoxmodal pretrain-genes --src ../shared/data/her2st --model drvi "
        "--out gene_models/drvi",
        "histoxmodal pretrain-genes --src ../shared/data/her2st --model scvi --batch-key sample "
        "--genes 1000 --out gene_models/scvi",
        "histoxmodal pretrain-genes --src sections/ --recipe h5ad --model drvi "
        "--out gene_models/mine --resume",
    ),
    "predict": (
        "histoxmodal predict runs/small slides/*.svs --out maps/",
        "histoxmodal predict runs/small B4.jpg --mpp 0.688 --genes ERBB2,CD74 --out maps/",
    ),
    "fit-head": (
        "histoxmodal fit-head runs/small                 # ridge, for histoxmodal predict",
        "histoxmodal fit-head runs/small --head mlp",
    ),
    "embed": (
        "histoxmodal embed runs/small --data her2st_paired --out embeddings.h5ad",
        "histoxmodal embed runs/small --data her2st_paired --out emb.h5ad --batch-size 32",
    ),
    "evaluate": (
        "histoxmodal evaluate runs/small --data her2st_paired --out eval/",
        "histoxmodal evaluate runs/loso --data her2st_paired "
        "--split her2st_paired/splits/sample.json --fold sample=C5 --out eval_C5/",
    ),
    "features": (
        "histoxmodal features slides/*.svs --encoder uni --weights UNI/pytorch_model.bin --out f/",
        "histoxmodal features tiles/ --encoder timm:resnet50 --out f/ --format anndata",
        "histoxmodal features slides/ --run runs/small --projection --out f/ --shard auto",
    ),
    "models": (
        "histoxmodal models",
        "histoxmodal models 'uni*'",
        "histoxmodal models --tests",
    ),
    "bench": (
        "histoxmodal bench tiling",
        "histoxmodal bench her2st --src ../shared/data/her2st",
        "histoxmodal bench features --device cuda --json features.json",
    ),
    "bench hescape": (
        "histoxmodal bench hescape --data her2st_paired --image-encoders timm:resnet10t "
        "--gene-encoders gene_mlp,gene_drvi --weights gene_drvi=gene_models/drvi --out hescape/",
        "histoxmodal bench hescape --data hescape_breast --image-encoders uni,timm:resnet18 "
        "--gene-encoders gene_mlp --weights uni=weights/uni.bin --loss siglip --out grid/",
    ),
    "bench features": (
        "histoxmodal bench features",
        "histoxmodal bench features --encoder timm:resnet50 --device cuda --batch-size 128",
    ),
    "bench predict": (
        "histoxmodal bench predict",
        "histoxmodal bench predict --slide slide.svs --device cuda --json predict.json",
    ),
    "bench tiling": (
        "histoxmodal bench tiling                 # a generated slide",
        "histoxmodal bench tiling slide.svs --repeats 3 --json tiling.json",
        "histoxmodal bench tiling --large 0       # skip the 100k x 100k tissue detection",
    ),
    "bench dataset": (
        "histoxmodal bench dataset --data her2st_paired",
        "histoxmodal bench dataset --data her2st_paired --workers 4 --json loader.json",
    ),
    "bench retrieval": (
        "histoxmodal bench retrieval",
        "histoxmodal bench retrieval --n 20000 --dim 256 --json retrieval.json",
    ),
    "bench train": (
        "histoxmodal bench train --data her2st_paired",
        "histoxmodal bench train --data her2st_paired --encoder timm:resnet50 --steps 20",
    ),
    "bench her2st": (
        "histoxmodal bench her2st --src ../shared/data/her2st",
        "histoxmodal bench her2st --src ../shared/data/her2st --epochs 2 --out quick/",
        "histoxmodal bench her2st --src ../shared/data/her2st --config her2st_small "
        "--folds sample=C3,patient=B",
    ),
    "bench xenium": (
        "histoxmodal bench xenium --rows 1000000,10000000",
        "histoxmodal bench xenium --rows 40000000 --naive-max-rows 0 --json xenium.json",
    ),
    "bench neighbours": (
        "histoxmodal bench neighbours                    # 100k spots, one section, 250 µm",
        "histoxmodal bench neighbours --spots 20000 --sections 4 --radius-um 450",
    ),
    "bench visium-hd": (
        "histoxmodal bench visium-hd                      # the full 3350 x 3350 grid",
        "histoxmodal bench visium-hd --rows 1000 --cols 1000 --pools 55:square,100:disc",
    ),
    "bench tissue": (
        "histoxmodal bench tissue --src ../shared/data",
        "histoxmodal bench tissue --src ../shared/data --methods saturation-otsu --json t.json",
    ),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped to the terminal as usual; the examples epilog kept line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("Examples:"):
            return super()._fill_text(text, width, indent)  # raw: one command a line
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def add_examples(parser: argparse.ArgumentParser, command: str) -> None:
    """End ``parser``'s help with the examples of ``command`` (a key of :data:`EXAMPLES`)."""
    parser.formatter_class = HelpFormatter
    lines = EXAMPLES.get(command)
    if lines:
        parser.epilog = "Examples:\n" + "\n".join(f"  {line}" for line in lines)
