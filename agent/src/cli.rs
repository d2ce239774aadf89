//! The command line, parsed by clap (derive): `run`, `check`, `probe`, `reflect`,
//! `help [COMMAND]`, `-h`/`--help` and `-V`/`--version`. Each subcommand's arguments
//! are declared beside the code that uses them (`run::RunArgs`, `run::CheckArgs`,
//! `cmd_probe::ProbeArgs`, `reflect::ReflectArgs`); this file only assembles them.
//!
//! clap's exit codes are the contract: a usage error is printed on stderr with the
//! usage line and exits with status 2; help and version go to stdout with status 0.

use clap::{Parser, Subcommand};

use crate::cmd_probe::ProbeArgs;
use crate::reflect::ReflectArgs;
use crate::run::{CheckArgs, RunArgs};

/// The whole command line.
#[derive(Debug, Parser)]
#[command(name = "faultline-agent", version, about = "Faultline gateway agent")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// What the command line asks for.
#[derive(Debug, Subcommand)]
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(line: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("faultline-agent").chain(line.iter().copied()))
            .map(|c| c.cmd)
    }

    fn cmd(line: &[&str]) -> Cmd {
        parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// A usage error's text, after checking it exits with status 2.
    fn err(line: &[&str]) -> String {
        match parse(line) {
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{line:?}: {e}");
                e.to_string()
            }
            Ok(c) => panic!("{line:?} parsed: {c:?}"),
        }
    }

    /// What help or version prints on stdout, after checking it exits with status 0.
    fn printed(line: &[&str]) -> String {
        match parse(line) {
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
                assert_eq!(e.exit_code(), 0, "{line:?}");
                assert!(!e.use_stderr(), "{line:?} prints on stdout");
                e.to_string()
            }
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_and_help() {
        assert_eq!(
            printed(&["--version"]),
            concat!("faultline-agent ", env!("CARGO_PKG_VERSION"), "\n")
        );
        assert_eq!(printed(&["-V"]), printed(&["--version"]));
        for h in [&["--help"][..], &["-h"], &["help"]] {
            let s = printed(h);
            assert!(s.contains("Usage: faultline-agent <COMMAND>"), "{s}");
            for c in ["run", "check", "probe", "reflect", "help"] {
                assert!(s.contains(&format!("\n  {c} ")), "{c} missing: {s}");
            }
            // The summaries are the variants' docs, without their full stops.
            assert!(s.contains("publish reports over MQTT\n"), "{s}");
        }
        for c in ["run", "check", "probe", "reflect"] {
            let s = printed(&[c, "--help"]);
            assert!(s.contains(&format!("Usage: faultline-agent {c}")), "{s}");
            assert_eq!(printed(&[c, "-h"]), s);
            assert_eq!(printed(&["help", c]), s);
        }
        for c in ["run", "check"] {
            let s = printed(&[c, "--help"]);
            assert!(
                s.contains(&format!("faultline-agent {c} --config <CONFIG>")),
                "{s}"
            );
            assert!(s.contains("The agent's config file (TOML)"), "{s}");
        }
        let s = printed(&["probe", "--help"]);
        assert!(
            s.contains("faultline-agent probe [OPTIONS] <KIND> <HOST>"),
            "{s}"
        );
        for f in [
            "<KIND>  icmp, stamp, sip, stun, dns or tcp",
            "--pps <PPS>",
            "--seconds <SECONDS>",
            "--codec <CODEC>",
            "--pad",
            "--count <COUNT>",
            "--interval-ms <INTERVAL_MS>",
            "--transport <TRANSPORT>",
            "--record <RECORD>",
            "--server <SERVER>",
            "--json",
        ] {
            assert!(s.contains(f), "{f} missing: {s}");
        }
        let s = printed(&["reflect", "-h"]);
        assert!(
            s.contains("--stateful") && s.contains("[default: 0.0.0.0:862]"),
            "{s}"
        );
    }

    #[test]
    fn no_command_prints_the_help_as_a_usage_error() {
        let e = parse(&[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.use_stderr());
        assert!(e.to_string().contains("Usage: faultline-agent <COMMAND>"));
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
        let Cmd::Probe(a) = cmd(&["probe", "icmp", "gateway"]) else {
            panic!()
        };
        assert_eq!(
            (a.pps, a.seconds, a.codec, a.pad, a.json),
            (None, None, None, false, false)
        );
        let Cmd::Probe(a) = cmd(&["probe", "dns", "--", "-weird"]) else {
            panic!()
        };
        assert_eq!(a.host, "-weird");
    }

    #[test]
    fn bad_arguments_are_named() {
        assert!(err(&["bogus"]).contains("unrecognized subcommand 'bogus'"));
        assert!(err(&["run"]).contains("--config <CONFIG>"));
        assert!(err(&["check"]).contains("--config <CONFIG>"));
        assert!(err(&["run", "--config"]).contains("'--config <CONFIG>'"));
        assert!(err(&["check", "--bogus"]).contains("'--bogus'"));
        assert!(err(&["probe"]).contains("<KIND>"));
        assert!(err(&["probe", "icmp"]).contains("<HOST>"));
        assert!(err(&["probe", "icmp", "x", "y"]).contains("'y'"));
        assert!(err(&["probe", "icmp", "x", "--pps", "abc"]).contains("'--pps <PPS>'"));
        assert!(err(&["probe", "icmp", "x", "--pps", "-1"]).contains("'-1'"));
        assert!(
            err(&["probe", "icmp", "x", "--seconds", "soon"]).contains("'--seconds <SECONDS>'")
        );
        assert!(err(&["probe", "icmp", "x", "-q"]).contains("'-q'"));
        assert!(err(&["probe", "icmp", "x", "--json=yes"]).contains("'--json'"));
        assert!(err(&["reflect", "--stateful=yes"]).contains("'--stateful'"));
        assert!(err(&["reflect", "x"]).contains("'x'"));
        assert!(err(&["help", "nope"]).contains("'nope'"));
        // Every error carries the usage line of its subcommand.
        assert!(err(&["probe", "icmp"]).contains("Usage: faultline-agent probe"));
    }
}
