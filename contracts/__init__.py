"""evalbus wire contracts: events, enums, ids and subjects. Pure: no I/O."""
