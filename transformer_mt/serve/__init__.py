"""`transformer-mt serve`: a translation service over one checkpoint, and a page that shows what
the model attends to.

- `settings.py`  the `server:` node of the serve config (limits, batching window); no web imports,
                 so that `config.py` can register it without the optional `serve` extra;
- `batcher.py`   dynamic batching: one worker thread owns the model and decodes the requests of a
                 short window together, in the Translator's length-sorted batches;
- `api.py`       what a request may say (validated with pydantic) and what the answers look like,
                 in our format and OpenNMT-py's;
- `app.py`       the Starlette application and its uvicorn server, with a graceful SIGTERM;
- `static/`      the page (`GET /`): plain HTML, JavaScript and CSS, no CDN.
"""
