from celltally.cli import app

app()
