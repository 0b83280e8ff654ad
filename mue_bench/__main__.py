from mue_bench.cli import app

app()
