"""The web console: static pages served by cloudcore that talk to its JSON API.

`console_router(fleet, access=...)` serves `/console/` (one HTML shell, one script,
one style sheet, shipped in the wheel) and redirects `/` there; the pages hold no
data of their own. Everything a page shows comes from the API with the bearer token
the operator signed in with (kept in the tab's sessionStorage, sent as an
`Authorization` header, never in a URL or a cookie), so the API's roles apply to every
call. One summary route of the console's own, `GET /console/api/overview`, counts the
fleet's nodes by state server-side and lists the first nodes in trouble, so no page
loads the whole fleet. See docs/console.md.
"""

from cloudcore.console.routes import CSP, console_router

__all__ = ["CSP", "console_router"]
