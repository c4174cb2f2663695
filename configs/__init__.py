"""The shipped configs (`--config NAME` reads NAME.toml here), installed as the package `bertpld.configs`.

This file makes the directory a regular package, which an editable install can map (pyproject.toml).
"""
