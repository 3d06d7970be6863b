#!/usr/bin/python
"""The proxy's self-signed certificate and its key, checked and kept in one call: three
community.crypto tasks (key, request, certificate) cost a module call each on every run."""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dagster_self_signed_cert
short_description: A self-signed certificate and its key (ECC P-384), kept while they fit
description:
  - Makes the key when it is missing or not an ECC P-384 key, then a certificate signed
    by it when there is none, or the one there is for another key, names another subject
    or other alternative names, or ends within I(renew_days).
  - Uses python3-cryptography on the host. Check mode reports what it would make.
options:
  key_path:
    description: The private key (mode 0600).
    type: path
    required: true
  cert_path:
    description: The certificate (mode 0644).
    type: path
    required: true
  common_name:
    description: The subject's common name.
    type: str
    required: true
  subject_alt_name:
    description: Alternative names, each C(DNS:name) or C(IP:address).
    type: list
    elements: str
    required: true
  days:
    description: How long a new certificate is valid.
    type: int
    required: true
  renew_days:
    description:
      - A certificate that ends sooner than this is made again (or sooner than a third of
        I(days), when that is less: a new one must not be due for renewal at once).
    type: int
    default: 30
"""

RETURN = r"""
reasons:
  description: Why the key or the certificate was (or would be) made.
  type: list
  returned: always
"""


def wanted_names(entries: list[str]):
    from cryptography import x509

    names = []
    for entry in entries:
        kind, _, value = entry.partition(":")
        if kind == "IP":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "DNS":
            names.append(x509.DNSName(value))
        else:
            raise ValueError(f"subject_alt_name {entry!r} is neither DNS:name nor IP:address")
    return names


def not_after(cert) -> datetime.datetime:
    """cryptography 42 and later (Debian 13) have not_valid_after_utc; 38 (Debian 12) not."""
    end = getattr(cert, "not_valid_after_utc", None)
    return end or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def write(path: str, data: bytes, mode: int) -> None:
    handle, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".dagster-")
    try:
        os.fchmod(handle, mode)
        os.write(handle, data)
    finally:
        os.close(handle)
    os.replace(partial, path)  # keeps the mode set above (atomic_move would widen a new file's)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "key_path": {"type": "path", "required": True},
            "cert_path": {"type": "path", "required": True},
            "common_name": {"type": "str", "required": True},
            "subject_alt_name": {"type": "list", "elements": "str", "required": True},
            "days": {"type": "int", "required": True},
            "renew_days": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        module.fail_json(msg="python3-cryptography is missing on the proxy host")
    p = module.params
    try:
        alt_names = wanted_names(p["subject_alt_name"])
    except ValueError as error:
        module.fail_json(msg=str(error))
    reasons = []

    key = None
    try:
        with open(p["key_path"], "rb") as source:
            key = serialization.load_pem_private_key(source.read(), password=None)
        if not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"):
            reasons.append("the key is not ECC P-384")
            key = None
    except FileNotFoundError:
        reasons.append("no key")
    except ValueError:
        reasons.append("the key cannot be read")
    if key is None:
        key = ec.generate_private_key(ec.SECP384R1())
        if not module.check_mode:
            write(p["key_path"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()), 0o600)

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, p["common_name"])])
    why = None
    try:
        with open(p["cert_path"], "rb") as source:
            cert = x509.load_pem_x509_certificate(source.read())
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = []
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(serialization.Encoding.DER, public) != \
                key.public_key().public_bytes(serialization.Encoding.DER, public):
            why = "the certificate is for another key"
        elif cert.subject != subject:
            why = f"the certificate names {cert.subject.rfc4514_string()}"
        elif set(sans) != set(alt_names):
            why = "the certificate has other alternative names"
        elif not_after(cert) - now < datetime.timedelta(days=min(p["renew_days"], p["days"] / 3)):
            why = f"the certificate ends on {not_after(cert):%Y-%m-%d}"
    except FileNotFoundError:
        why = "no certificate"
    except ValueError:
        why = "the certificate cannot be read"
    if why:
        reasons.append(why)
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=p["days"]))
                .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(key, hashes.SHA256()))
        if not module.check_mode:
            write(p["cert_path"], cert.public_bytes(serialization.Encoding.PEM), 0o644)
    changed = bool(reasons)
    for path, mode in ((p["key_path"], "0600"), (p["cert_path"], "0644")):
        if os.path.exists(path):  # not yet in check mode on a fresh host
            before = changed
            changed = module.set_owner_if_different(path, "root", changed)
            changed = module.set_group_if_different(path, "root", changed)
            changed = module.set_mode_if_different(path, mode, changed)
            if changed and not before:
                reasons.append(f"{path}: owner, group or mode")
    module.exit_json(changed=changed, reasons=reasons)


if __name__ == "__main__":
    main()
