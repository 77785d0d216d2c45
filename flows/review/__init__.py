"""`prefsynth review RUN_DIR`: a local web app to page through a run's pairs and label them.

  app.py    the Starlette app on a real uvicorn server, over pipeline/review/view.py and labels.py
  pages.py  the HTML of its pages, rendered on the server (every run value escaped)
  static/   its stylesheet and script
"""
