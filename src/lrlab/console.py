"""What the console shows: progress and results, not the libraries' banners."""


def quiet_libraries() -> None:
    """Keep the console to progress and results: Lightning's banners and tips go to DEBUG."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # bitsandbytes (pulled in by PEFT where installed) warns on import about an optional CPU kernel
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")
