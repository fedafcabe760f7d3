"""The dispatcher room: a host's daemon and the pipeline it runs for each sub-job."""
