"""The one way the trainer and the exporter reach this project's input pipeline (``datasets/``).

The input pipeline is the top-level package ``datasets``, as the project's layout has it; Hugging
Face's library is a top-level package ``datasets`` too. In an environment that has both, one shadows
the other depending on ``sys.path``. Neither may break silently: ``input_pipeline()`` refuses a
``datasets`` that is not ours with an ``ImportError`` naming where it came from, and our
``datasets`` warns when it is imported in an environment where Hugging Face's is installed
(``datasets.check_name_clash``). The cure in both cases is the same: a virtual environment of its own
for this project.
"""

__all__ = ["input_pipeline"]


def input_pipeline():
    """This project's ``datasets`` package, or ``ImportError`` when another package of that name wins."""
    import datasets  # noqa: PLC0415

    if not getattr(datasets, "EFFICIENTNETV2_INPUT_PIPELINE", False):
        raise ImportError(
            f"the package 'datasets' imported from {getattr(datasets, '__file__', '?')} is not "
            "EfficientNetV2's input pipeline (Hugging Face's 'datasets'?): both are top-level packages "
            "named 'datasets'. Install efficientnetv2-keras in a virtual environment of its own, or run "
            "from the repository root."
        )
    return datasets
