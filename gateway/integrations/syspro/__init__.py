"""SYSPRO: the OData 4 read service and the e.net session (COMFND) as a record source.

``client.py`` reads (OData over Basic auth; e.net Utilities logon and COMFND when OData is not
licensed), ``settings.py`` holds the ``[syspro]`` settings, ``simulator/`` the SYSPRO fake the
tests and the demo serve on loopback (imported only by the sandbox, never by the gateway).
"""
