"""Rows in: loading datasets, telling their shape, and each row's rating and training views."""
