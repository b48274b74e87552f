"""Face identification at the edge: embeddings in, decisions out, templates encrypted at rest.

The data path of a face: a crop (or an embedding computed on the camera module) arrives
as protocol-v1 frames → :mod:`.images` decodes it → :mod:`.embedder` runs the bundle's
embedding model → :mod:`.index` matches the vector 1:N against the in-memory gallery →
:mod:`.pipeline` turns the best match into a ``face.match`` or ``face.unknown`` event.
Templates live in :mod:`.store` (SQLite, AES-GCM with a key from :mod:`.keys`); every
enrolment and removal is written to its append-only audit log.
"""
