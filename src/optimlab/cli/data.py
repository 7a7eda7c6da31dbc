"""``optimlab data list | info``: which data sets exist, where they were found, what is in them."""

from __future__ import annotations

import argparse
import json

from optimlab.cli.arguments import path_arg


def add_to(sub) -> None:
    d = sub.add_parser("data", help="data sets: list, info",
                       description="Data sets: which exist, where they were found, what is in them.")
    dsub = d.add_subparsers(title="commands", metavar="COMMAND")
    dl = dsub.add_parser("list", help="every data set, whether and where it was found",
                         description="Every data set, whether and where it was found, or how to get it.")
    dl.add_argument("--data-dir", type=path_arg, default=None,
                    help="folder holding data sets as DATA_DIR/NAME/")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    dl.set_defaults(func=_data_list)
    di = dsub.add_parser("info", help="load a data set and describe it",
                         description="Load a data set (downloading it if needed) and describe it.")
    di.add_argument("name", help="data set name, e.g. mnist-10k or mnist-10k:0,1")
    di.add_argument("--data-dir", type=path_arg, default=None)
    di.set_defaults(func=_data_info)
    d.set_defaults(func=lambda a: (d.print_help(), 2)[1])


def _data_list(args: argparse.Namespace) -> int:
    from optimlab.data import dataset_status
    from optimlab.registry import plugins

    rows = dataset_status(args.data_dir)
    for name, loader in plugins().datasets.items():  # the installed plugins' loaders
        summary = ((loader.__doc__ or "").strip().splitlines() or [""])[0]
        rows.append({"name": name, "found": True,
                     "where": f"loaded by {loader.__module__}.{loader.__qualname__}",
                     "summary": summary or "a data set of an installed plugin",
                     "how_to_get": "nothing to do"})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "found" if r["found"] else "missing"
        print(f"{r['name']:<{width}}  {mark:<7}  {r['summary']}")
        detail = f"at: {r['where']}" if r["found"] else f"get it: {r['how_to_get']}"
        print(f"{'':<{width}}           {detail}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from optimlab.data import load_dataset

    d = load_dataset(args.name, data_dir=args.data_dir)
    print(f"{d.name}: {d.task}, {d.num_train} train / {d.num_test} test samples, "
          f"input shape {d.input_shape}")
    if d.classes:
        counts = d.y_train.bincount(minlength=d.num_classes).tolist()
        pairs = zip(d.classes, counts, strict=True)
        print("classes (train count): " + ", ".join(f"{c} ({n})" for c, n in pairs))
    print(f"source: {d.source}")
    return 0
