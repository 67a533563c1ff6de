"""`crosscity certs`: make and manage the run's identities (CA, per-city certificates, revocation list).

Run it on the operator's machine; `export` one kit per site and copy only that kit there (see
docs/security.md). Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crosscity.federation import certs

EPILOG = """examples:
  crosscity certs init pki --cities centre,east,north --coordinator coord.example.org,10.0.0.5
  crosscity certs export pki east kits/east            # copy kits/east to the east site only
  crosscity certs export pki coordinator kits/coordinator
  crosscity certs revoke pki east                      # then copy pki/crl.pem to every site
  crosscity certs add pki east                         # a fresh certificate after a revocation
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crosscity certs",
        description="A private CA and one certificate + key per city and for the coordinator (ECDSA P-256).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="a new CA, the coordinator's and every city's certificate in DIR")
    init.add_argument("dir", type=Path)
    init.add_argument("--cities", required=True, help="comma-separated city names, e.g. centre,east")
    init.add_argument(
        "--coordinator",
        default=",".join(certs.LOCAL_HOSTS),
        help="comma-separated DNS names / IPs the cities dial [%(default)s]",
    )
    init.add_argument("--days", type=int, default=365, help="validity of the CA and the certificates")
    add = sub.add_parser("add", help="a certificate for a new (or revoked) city")
    add.add_argument("dir", type=Path)
    add.add_argument("city")
    add.add_argument("--days", type=int, default=365)
    revoke = sub.add_parser("revoke", help="put a city's certificate on the revocation list (DIR/crl.pem)")
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("city")
    export = sub.add_parser("export", help="one site's kit: CA, CRL and its own certificate + key")
    export.add_argument("dir", type=Path)
    export.add_argument("name", help="a city name, or `coordinator`")
    export.add_argument("out", type=Path, help="a new (or empty) directory")
    return p


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "init":
            cities, hosts = _split(args.cities), _split(args.coordinator)
            certs.init(args.dir, cities, hosts, args.days)
            print(
                f"{args.dir}: CA, coordinator ({', '.join(hosts)}) and {len(cities)} cities "
                f"({', '.join(cities)}), valid {args.days} days; keys 0600. Next: crosscity certs export "
                f"{args.dir} CITY OUT for each site"
            )
        elif args.action == "add":
            cert = certs.add(args.dir, args.city, args.days)
            print(f"{args.dir}: city {args.city} added (serial {cert.serial_number:x})")
        elif args.action == "revoke":
            serial = certs.revoke(args.dir, args.city)
            crl = args.dir / certs.CRL
            print(f"{args.dir}: city {args.city} revoked (serial {serial:x}); copy {crl} to every site")
        else:
            written = certs.export(args.dir, args.name, args.out)
            print(f"{args.out}: kit for {args.name} ({', '.join(p.name for p in written)})")
    except (ValueError, OSError) as exc:  # CertsError, and unreadable or corrupt files in DIR
        print(f"crosscity certs {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
