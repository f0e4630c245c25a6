"""Datasets on disk and in flight: Parquet shards, Ray Data pipelines, named recipes and the RELION importer."""
