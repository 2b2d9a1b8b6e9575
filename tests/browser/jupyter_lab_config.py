# JupyterLab settings for the headless browser test (tests/test_browser.py): no news toast, no update check.
c = get_config()  # noqa: F821 (provided by the Jupyter config loader)
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'
c.ServerApp.open_browser = False
