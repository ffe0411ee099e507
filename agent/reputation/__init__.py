"""The receivers' own view of the sender: Gmail Postmaster Tools and Microsoft SNDS as results
for the recorder (`feeds` schedules them; `postmaster` and `snds` fetch and parse; `http` is the
edge that maps HTTP failures to kinds)."""
