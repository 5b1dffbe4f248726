"""Running the flows unattended: the CLI, the demo, deployments, `serve`, and the S3 event bridge."""
