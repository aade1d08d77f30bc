"""The control plane's model, without sockets: objects and their lifecycles, the state
store, the scheduler, queued requests, users, logins, sandbox paths and limits. It imports
only ``protocol`` and ``errors``; the data plane, the commands and the server build on it."""
