//! The command line, parsed by hand: four subcommands and a dozen flags do not need
//! clap's 60 kB on the gateway. Flags take their value as `--flag VALUE` or
//! `--flag=VALUE`; `--` ends the flags; `help [COMMAND]`, `-h`/`--help` and
//! `-V`/`--version` work as before. A bad argument is named on stderr, with the
//! usage line, and the process exits with status 2.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::cmd_probe::ProbeArgs;
use crate::reflect::ReflectArgs;
use crate::run::{CheckArgs, RunArgs};

/// What the command line asks for.
#[derive(Debug)]
pub enum Cmd {
    /// Measure every configured target each window and publish reports over MQTT.
    Run(RunArgs),
    /// Validate a config file and print the resolved plan (exit 2 when invalid).
    Check(CheckArgs),
    /// One measurement now, as a table or `--json` as one ProbeResult.
    Probe(ProbeArgs),
    /// An RFC 8762 STAMP session-reflector.
    Reflect(ReflectArgs),
}

/// The outcome of parsing: a command to run, or text to print and exit with.
#[derive(Debug)]
pub enum Parsed {
    Cmd(Cmd),
    /// Help or version: print to stdout, exit 0.
    Print(String),
}

/// A command-line error: the message, printed to stderr, exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct Error(pub String);

pub const NAME: &str = "faultline-agent";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const TOP_HELP: &str = "Faultline gateway agent

Usage: faultline-agent <COMMAND>

Commands:
  run      Measure every configured target each window and publish reports over MQTT
  check    Validate a config file and print the resolved plan (exit 2 when invalid)
  probe    One measurement now, as a table or `--json` as one ProbeResult
  reflect  An RFC 8762 STAMP session-reflector
  help     Print this message or the help of the given subcommand(s)

Options:
  -h, --help     Print help
  -V, --version  Print version
";

const RUN_HELP: &str = "Measure every configured target each window and publish reports over MQTT

Usage: faultline-agent run --config <CONFIG>

Options:
      --config <CONFIG>  The agent's config file (TOML)
  -h, --help             Print help
";

const CHECK_HELP: &str = "Validate a config file and print the resolved plan (exit 2 when invalid)

Usage: faultline-agent check --config <CONFIG>

Options:
      --config <CONFIG>  The agent's config file (TOML)
  -h, --help             Print help
";

const PROBE_HELP: &str = "One measurement now, as a table or `--json` as one ProbeResult

Usage: faultline-agent probe [OPTIONS] <KIND> <HOST>

Arguments:
  <KIND>  icmp, stamp, sip, stun, dns or tcp
  <HOST>  Target: host, host:port or IP (for dns: the name to resolve)

Options:
      --pps <PPS>                  stamp: packets per second (default 50)
      --seconds <SECONDS>          How long to measure: stamp stream length, or the timeout of sip/stun/dns/tcp (default 5)
      --codec <CODEC>              stamp: g711, g711-noplc or g729a (default g711)
      --pad                        stamp: pad test packets to the codec's frame size
      --count <COUNT>              icmp: number of echoes (default --seconds, one per second)
      --interval-ms <INTERVAL_MS>  icmp: milliseconds between echoes (default 1000)
      --transport <TRANSPORT>      sip: udp or tcp (default udp)
      --record <RECORD>            dns: a, aaaa or srv (default a; srv for names starting with _)
      --server <SERVER>            dns: server IP or IP:port (default: first nameserver of /etc/resolv.conf)
      --json                       Print one ProbeResult as JSON instead of a table
  -h, --help                       Print help
";

const REFLECT_HELP: &str = "An RFC 8762 STAMP session-reflector

Usage: faultline-agent reflect [OPTIONS]

Options:
      --listen <LISTEN>  Address to listen on (default port 862) [default: 0.0.0.0:862]
      --stateful         Keep a sequence counter per sender (RFC 8762 stateful mode)
  -h, --help             Print help
";

fn help_of(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "run" => RUN_HELP,
        "check" => CHECK_HELP,
        "probe" => PROBE_HELP,
        "reflect" => REFLECT_HELP,
        _ => return None,
    })
}

fn usage_of(cmd: &str) -> &'static str {
    match cmd {
        "run" => "faultline-agent run --config <CONFIG>",
        "check" => "faultline-agent check --config <CONFIG>",
        "probe" => "faultline-agent probe [OPTIONS] <KIND> <HOST>",
        "reflect" => "faultline-agent reflect [OPTIONS]",
        _ => "faultline-agent <COMMAND>",
    }
}

fn error(cmd: &str, msg: String) -> Error {
    Error(format!(
        "error: {msg}\n\nUsage: {}\n\nFor more information, try '--help'.",
        usage_of(cmd)
    ))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Parsed, Error> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        // No command: the help, but as an error (clap's behaviour, exit 2).
        return Err(Error(TOP_HELP.trim_end().to_owned()));
    };
    let first = utf8("", first)?;
    let cmd = match first.as_str() {
        "-h" | "--help" => return Ok(Parsed::Print(TOP_HELP.to_owned())),
        "-V" | "--version" => return Ok(Parsed::Print(format!("{NAME} {VERSION}\n"))),
        "help" => {
            let Some(sub) = args.next() else {
                return Ok(Parsed::Print(TOP_HELP.to_owned()));
            };
            let sub = utf8("", sub)?;
            return match help_of(&sub) {
                Some(h) => Ok(Parsed::Print(h.to_owned())),
                None => Err(error("", format!("unrecognized subcommand '{sub}'"))),
            };
        }
        c if help_of(c).is_some() => c.to_owned(),
        other => return Err(error("", format!("unrecognized subcommand '{other}'"))),
    };
    let mut p = Args {
        cmd: cmd.clone(),
        rest: args,
        only_positional: false,
    };
    let parsed = match cmd.as_str() {
        "run" | "check" => {
            let mut config: Option<PathBuf> = None;
            while let Some(a) = p.next()? {
                match a {
                    Arg::Help => return Ok(Parsed::Print(help_of(&cmd).unwrap().to_owned())),
                    Arg::Flag(f, inline) if f == "config" => {
                        config = Some(PathBuf::from(p.value_os("--config <CONFIG>", inline)?));
                    }
                    other => return Err(p.unexpected(other)),
                }
            }
            let Some(config) = config else {
                return Err(error(
                    &cmd,
                    "the following required arguments were not provided:\n  --config <CONFIG>"
                        .to_owned(),
                ));
            };
            if cmd == "run" {
                Cmd::Run(RunArgs { config })
            } else {
                Cmd::Check(CheckArgs { config })
            }
        }
        "probe" => {
            let mut pos = Vec::new();
            let mut a = ProbeArgs::default();
            while let Some(arg) = p.next()? {
                match arg {
                    Arg::Help => return Ok(Parsed::Print(PROBE_HELP.to_owned())),
                    Arg::Positional(v) => pos.push(v),
                    Arg::Flag(f, inline) => match f.as_str() {
                        "pps" => a.pps = Some(p.number("--pps <PPS>", inline)?),
                        "seconds" => a.seconds = Some(p.number("--seconds <SECONDS>", inline)?),
                        "codec" => a.codec = Some(p.value("--codec <CODEC>", inline)?),
                        "count" => a.count = Some(p.number("--count <COUNT>", inline)?),
                        "interval-ms" => {
                            a.interval_ms = Some(p.number("--interval-ms <INTERVAL_MS>", inline)?)
                        }
                        "transport" => {
                            a.transport = Some(p.value("--transport <TRANSPORT>", inline)?)
                        }
                        "record" => a.record = Some(p.value("--record <RECORD>", inline)?),
                        "server" => a.server = Some(p.value("--server <SERVER>", inline)?),
                        "pad" => a.pad = p.switch("--pad", inline)?,
                        "json" => a.json = p.switch("--json", inline)?,
                        _ => return Err(p.unexpected(Arg::Flag(f, inline))),
                    },
                }
            }
            let mut pos = pos.into_iter();
            match (pos.next(), pos.next(), pos.next()) {
                (Some(kind), Some(host), None) => {
                    a.kind = kind;
                    a.host = host;
                }
                (_, _, Some(extra)) => {
                    return Err(error(&cmd, format!("unexpected argument '{extra}' found")));
                }
                (kind, _, _) => {
                    let missing = if kind.is_none() {
                        "\n  <KIND>\n  <HOST>"
                    } else {
                        "\n  <HOST>"
                    };
                    return Err(error(
                        &cmd,
                        format!("the following required arguments were not provided:{missing}"),
                    ));
                }
            }
            Cmd::Probe(a)
        }
        _ => {
            let mut a = ReflectArgs {
                listen: "0.0.0.0:862".to_owned(),
                stateful: false,
            };
            while let Some(arg) = p.next()? {
                match arg {
                    Arg::Help => return Ok(Parsed::Print(REFLECT_HELP.to_owned())),
                    Arg::Flag(f, inline) if f == "listen" => {
                        a.listen = p.value("--listen <LISTEN>", inline)?;
                    }
                    Arg::Flag(f, inline) if f == "stateful" => {
                        a.stateful = p.switch("--stateful", inline)?;
                    }
                    other => return Err(p.unexpected(other)),
                }
            }
            Cmd::Reflect(a)
        }
    };
    Ok(Parsed::Cmd(parsed))
}

fn utf8(cmd: &str, a: OsString) -> Result<String, Error> {
    a.into_string()
        .map_err(|a| error(cmd, format!("invalid UTF-8 in argument {a:?}")))
}

/// One argument of a subcommand.
#[derive(Debug)]
enum Arg {
    Help,
    /// `--name` (without the dashes) and the value after `=`, if any.
    Flag(String, Option<OsString>),
    Positional(String),
}

struct Args<I> {
    cmd: String,
    rest: I,
    only_positional: bool,
}

impl<I: Iterator<Item = OsString>> Args<I> {
    fn next(&mut self) -> Result<Option<Arg>, Error> {
        let Some(a) = self.rest.next() else {
            return Ok(None);
        };
        if self.only_positional {
            return utf8(&self.cmd, a).map(|a| Some(Arg::Positional(a)));
        }
        // Flags are ASCII; split `--name=value` on the bytes so a non-UTF-8 value
        // (a config path) survives.
        let bytes = a.as_encoded_bytes();
        if bytes == b"--" {
            self.only_positional = true;
            return self.next();
        }
        if bytes == b"-h" || bytes == b"--help" {
            return Ok(Some(Arg::Help));
        }
        if let Some(flag) = bytes.strip_prefix(b"--") {
            let (name, value) = match flag.iter().position(|&b| b == b'=') {
                Some(i) => (&flag[..i], Some(&flag[i + 1..])),
                None => (flag, None),
            };
            let name = String::from_utf8_lossy(name).into_owned();
            // SAFETY: `value` is a suffix of an OsString's encoded bytes that starts
            // right after an ASCII '=', which is a valid split point.
            let value =
                value.map(|v| unsafe { OsString::from_encoded_bytes_unchecked(v.to_vec()) });
            return Ok(Some(Arg::Flag(name, value)));
        }
        if bytes.len() > 1 && bytes[0] == b'-' && !bytes[1].is_ascii_digit() {
            let a = a.to_string_lossy().into_owned();
            return Err(error(&self.cmd, format!("unexpected argument '{a}' found")));
        }
        utf8(&self.cmd, a).map(|a| Some(Arg::Positional(a)))
    }

    fn unexpected(&self, a: Arg) -> Error {
        let shown = match a {
            Arg::Help => "--help".to_owned(),
            Arg::Flag(f, _) => format!("--{f}"),
            Arg::Positional(p) => p,
        };
        error(&self.cmd, format!("unexpected argument '{shown}' found"))
    }

    fn value_os(&mut self, flag: &str, inline: Option<OsString>) -> Result<OsString, Error> {
        match inline.or_else(|| self.rest.next()) {
            Some(v) => Ok(v),
            None => Err(error(
                &self.cmd,
                format!("a value is required for '{flag}' but none was supplied"),
            )),
        }
    }

    fn value(&mut self, flag: &str, inline: Option<OsString>) -> Result<String, Error> {
        let v = self.value_os(flag, inline)?;
        utf8(&self.cmd, v)
    }

    fn number<T: std::str::FromStr>(
        &mut self,
        flag: &str,
        inline: Option<OsString>,
    ) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.value(flag, inline)?;
        v.parse()
            .map_err(|e| error(&self.cmd, format!("invalid value '{v}' for '{flag}': {e}")))
    }

    fn switch(&mut self, flag: &str, inline: Option<OsString>) -> Result<bool, Error> {
        match inline {
            None => Ok(true),
            Some(v) => Err(error(
                &self.cmd,
                format!(
                    "unexpected value '{}' for '{flag}' found; no more were expected",
                    v.to_string_lossy()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &[&str]) -> Result<Parsed, Error> {
        parse(line.iter().map(OsString::from))
    }

    fn cmd(line: &[&str]) -> Cmd {
        match parse_line(line) {
            Ok(Parsed::Cmd(c)) => c,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn err(line: &[&str]) -> String {
        match parse_line(line) {
            Err(Error(e)) => e,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn printed(line: &[&str]) -> String {
        match parse_line(line) {
            Ok(Parsed::Print(s)) => s,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn version_and_help() {
        assert_eq!(printed(&["--version"]), "faultline-agent 0.1.0\n");
        assert_eq!(printed(&["-V"]), "faultline-agent 0.1.0\n");
        for h in [&["--help"][..], &["-h"], &["help"]] {
            let s = printed(h);
            assert!(s.contains("Usage: faultline-agent <COMMAND>"), "{s}");
            for c in ["run", "check", "probe", "reflect"] {
                assert!(s.contains(&format!("\n  {c} ")), "{s}");
            }
        }
        for c in ["run", "check", "probe", "reflect"] {
            let s = printed(&[c, "--help"]);
            assert!(s.contains(&format!("Usage: faultline-agent {c}")), "{s}");
            assert_eq!(printed(&[c, "-h"]), s);
            assert_eq!(printed(&["help", c]), s);
        }
        let s = printed(&["probe", "--help"]);
        for f in [
            "--pps",
            "--seconds",
            "--codec",
            "--pad",
            "--count",
            "--interval-ms",
            "--transport",
            "--record",
            "--server",
            "--json",
        ] {
            assert!(s.contains(f), "{f} missing: {s}");
        }
        assert!(printed(&["reflect", "-h"]).contains("--stateful"));
        // No command at all: the help, as an error.
        assert!(err(&[]).contains("Usage: faultline-agent <COMMAND>"));
    }

    #[test]
    fn subcommands_and_flags() {
        let Cmd::Run(a) = cmd(&["run", "--config", "/etc/f.toml"]) else {
            panic!()
        };
        assert_eq!(a.config, PathBuf::from("/etc/f.toml"));
        let Cmd::Check(a) = cmd(&["check", "--config=x.toml"]) else {
            panic!()
        };
        assert_eq!(a.config, PathBuf::from("x.toml"));
        let Cmd::Reflect(a) = cmd(&["reflect"]) else {
            panic!()
        };
        assert_eq!((a.listen.as_str(), a.stateful), ("0.0.0.0:862", false));
        let Cmd::Reflect(a) = cmd(&["reflect", "--stateful", "--listen", "[::]:8620"]) else {
            panic!()
        };
        assert_eq!((a.listen.as_str(), a.stateful), ("[::]:8620", true));
        let Cmd::Probe(a) = cmd(&[
            "probe",
            "--json",
            "stamp",
            "10.0.0.1:862",
            "--pps=20",
            "--seconds",
            "2.5",
            "--codec",
            "g729a",
            "--pad",
            "--count",
            "3",
            "--interval-ms",
            "200",
            "--transport",
            "tcp",
            "--record",
            "aaaa",
            "--server",
            "9.9.9.9",
        ]) else {
            panic!()
        };
        assert_eq!(
            (a.kind.as_str(), a.host.as_str()),
            ("stamp", "10.0.0.1:862")
        );
        assert_eq!(
            (a.pps, a.seconds, a.count, a.interval_ms),
            (Some(20), Some(2.5), Some(3), Some(200))
        );
        assert_eq!(a.codec.as_deref(), Some("g729a"));
        assert_eq!(a.transport.as_deref(), Some("tcp"));
        assert_eq!(a.record.as_deref(), Some("aaaa"));
        assert_eq!(a.server.as_deref(), Some("9.9.9.9"));
        assert!(a.pad && a.json);
        let Cmd::Probe(a) = cmd(&["probe", "dns", "--", "-weird"]) else {
            panic!()
        };
        assert_eq!(a.host, "-weird");
    }

    #[test]
    fn bad_arguments_are_named() {
        assert!(err(&["bogus"]).contains("unrecognized subcommand 'bogus'"));
        assert!(err(&["run"]).contains("--config <CONFIG>"));
        assert!(err(&["run", "--config"]).contains("'--config <CONFIG>'"));
        assert!(err(&["check", "--bogus"]).contains("'--bogus'"));
        assert!(err(&["probe"]).contains("<KIND>"));
        assert!(err(&["probe", "icmp"]).contains("<HOST>"));
        assert!(err(&["probe", "icmp", "x", "y"]).contains("'y'"));
        assert!(err(&["probe", "icmp", "x", "--pps", "abc"]).contains("'--pps <PPS>'"));
        assert!(err(&["probe", "icmp", "x", "-q"]).contains("'-q'"));
        assert!(err(&["probe", "icmp", "x", "--json=yes"]).contains("'--json'"));
        assert!(err(&["reflect", "--stateful=yes"]).contains("'--stateful'"));
        assert!(err(&["reflect", "x"]).contains("'x'"));
        assert!(err(&["help", "nope"]).contains("'nope'"));
        // Every error carries the usage line.
        assert!(err(&["probe", "icmp"]).contains("Usage: faultline-agent probe"));
    }
}
