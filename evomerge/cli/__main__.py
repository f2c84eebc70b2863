from evomerge.cli import app

app()
