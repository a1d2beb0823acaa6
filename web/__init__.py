"""cbir's web front end: an HTTP/JSON API and a page, on the coordinator's client API.

No core logic of its own: queries go to the coordinator through ``cbir.client``; images are
read from S3 through ``cbir.storage`` only for ids the coordinator says are indexed.
"""
