"""For development: the embedded stack behind ``make run`` (``stack``), the stub
generation service (``stubservice``) and the plugin scaffold (``scaffold``)."""
