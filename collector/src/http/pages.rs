//! The pages an engineer opens beside `/`: a site, a provider, an incident. Each is
//! built once as data (served as JSON under `/api/`) and rendered from that data
//! as plain HTML with server-side SVG charts: no script, so nothing for the CSP to
//! admit but the shared style block, and nothing to fetch from the internet.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use faultline_shared::{Incident, State, Verdict};
use serde::Serialize;

use super::chart::{self, Band, Line, Scale};
use crate::report::{self, Availability, dur, utc};
use crate::snapshot::Snapshot;
use crate::store::{SeriesRow, Store};

/// The style every page here shares (its hash is in the CSP).
pub const STYLE: &str = "<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 10px 18px; display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: baseline; }
header a { color: #fff; } header h1 { font-size: 18px; margin: 0; }
main { padding: 12px; display: grid; gap: 14px; max-width: 1100px; margin: 0 auto; }
section { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px #0002; padding: 10px 14px; overflow-x: auto; }
h2 { font-size: 15px; margin: 2px 0 8px; } h3 { font-size: 14px; margin: 10px 0 4px; }
table { border-collapse: collapse; } th, td { padding: 3px 8px; text-align: left; border-bottom: 1px solid #eee; white-space: nowrap; }
th { font-weight: 600; font-size: 12px; color: #555; }
.ok { background: #d8f3dc; } .degraded { background: #ffe8a3; } .down, .outage { background: #f8b4b4; } .offline { background: #c9ccd3; }
.pill { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; }
.muted { color: #777; font-size: 12px; } .big { font-size: 22px; font-weight: 600; }
nav a { margin-right: 10px; } nav a.on { font-weight: 700; text-decoration: none; color: #1d2330; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 8px; }
figure.chart { margin: 0; } figcaption { font-size: 12px; color: #555; }
svg { width: 100%; height: auto; display: block; }
svg .axis, svg .grid { stroke: #bbb; stroke-width: 1; } svg .grid { stroke-dasharray: 3 3; }
svg .tick { font-size: 10px; fill: #666; }
svg .band { fill: #f8b4b4; fill-opacity: 0.45; }
svg polyline { fill: none; stroke-width: 1.6; }
svg .s0 { stroke: #0a58ca; fill: #0a58ca; } svg polyline.s0 { fill: none; }
svg .s1 { stroke: #d9480f; fill: #d9480f; } svg polyline.s1 { fill: none; }
.legend { font-size: 11px; } .key { margin-right: 10px; } .key.s0 { color: #0a58ca; } .key.s1 { color: #d9480f; }
</style>";

/// Escapes text for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Escapes one path segment of a link.
fn seg(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

fn pill(state: &str) -> String {
    format!("<span class=\"pill {0}\">{0}</span>", esc(state))
}

/// " · in maintenance until …" when the verdict is in a maintenance window.
fn maintenance_note(v: Option<&Verdict>) -> String {
    v.and_then(|v| v.maintenance).map_or(String::new(), |m| {
        format!(
            " · <span class=\"muted\">in maintenance until {} (no alerts)</span>",
            utc(m.until_ms)
        )
    })
}

/// A whole page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Faultline</title>{STYLE}</head><body>\
         <header><h1><a href=\"/\">Faultline</a></h1><span>{}</span></header>\
         <main>{body}</main></body></html>\n",
        esc(title),
        esc(title)
    )
}

/// The page for something that is not there.
pub fn not_found(what: &str) -> String {
    page(
        "Not found",
        &format!(
            "<section><h2>{}</h2><p>Nothing by that name is known to this collector (nor to its history). \
             <a href=\"/\">Back to the dashboard</a>.</p></section>",
            esc(what)
        ),
    )
}

/// Chart ranges a site page offers.
pub const RANGES: [(&str, u64); 3] = [
    ("1h", 3_600_000),
    ("24h", 86_400_000),
    ("7d", 7 * 86_400_000),
];
/// Points a chart draws at most (values are bucketed down to this).
pub const MAX_POINTS: usize = 240;

/// One bucket of a target's series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The bucket's start.
    pub t_ms: u64,
    /// Windows in the bucket (hourly rows count their windows).
    pub windows: u64,
    pub rtt_p50_ms: Option<f64>,
    /// The highest p95 in the bucket.
    pub rtt_p95_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// The highest loss in the bucket (0..1).
    pub loss: Option<f64>,
    /// The lowest MOS in the bucket.
    pub mos: Option<f64>,
}

/// Buckets `rows` over [from, to) into at most `n` points (empty buckets left out):
/// averages for p50 and jitter, the worst for p95, loss and MOS, so a spike stays
/// visible at any range.
pub fn buckets(rows: &[SeriesRow], from_ms: u64, to_ms: u64, n: usize) -> (u64, Vec<Point>) {
    let step = (to_ms.saturating_sub(from_ms) / n.max(1) as u64).max(1);
    let mut out: Vec<Point> = Vec::new();
    let mut sums: Vec<(f64, u64, f64, u64)> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.at_ms >= from_ms && r.at_ms < to_ms)
    {
        let t = from_ms + (r.at_ms - from_ms) / step * step;
        if out.last().is_none_or(|p| p.t_ms != t) {
            out.push(Point {
                t_ms: t,
                windows: 0,
                rtt_p50_ms: None,
                rtt_p95_ms: None,
                jitter_ms: None,
                loss: None,
                mos: None,
            });
            sums.push((0.0, 0, 0.0, 0));
        }
        // Both pushed together just above when missing.
        let (p, s) = (out.last_mut().unwrap(), sums.last_mut().unwrap());
        p.windows += r.windows;
        let w = r.windows.max(1);
        if let Some(v) = r.rtt_p50_ms {
            s.0 += v * w as f64;
            s.1 += w;
        }
        if let Some(v) = r.jitter_ms {
            s.2 += v * w as f64;
            s.3 += w;
        }
        let worst = |a: Option<f64>, b: Option<f64>, hi: bool| match (a, b) {
            (Some(a), Some(b)) => Some(if hi { a.max(b) } else { a.min(b) }),
            (a, b) => a.or(b),
        };
        p.rtt_p95_ms = worst(p.rtt_p95_ms, r.rtt_p95_ms, true);
        p.loss = worst(p.loss, Some(r.loss), true);
        p.mos = worst(p.mos, r.mos, false);
        p.rtt_p50_ms = (s.1 > 0).then(|| s.0 / s.1 as f64);
        p.jitter_ms = (s.3 > 0).then(|| s.2 / s.3 as f64);
    }
    (step, out)
}

/// An incident as a page lists it (and shades it).
#[derive(Debug, Clone, Serialize)]
pub struct IncidentRef {
    pub id: String,
    pub scope: String,
    pub subject: String,
    /// The worst state it reached.
    pub state: String,
    pub opened_ms: u64,
    pub closed_ms: Option<u64>,
    /// Where its band ends: its close, or (open) the page's `to_ms`.
    pub band_to_ms: u64,
}

impl IncidentRef {
    fn of(inc: &Incident, worst: State, to_ms: u64) -> Self {
        Self {
            id: inc.id.clone(),
            scope: inc.scope.as_str().to_owned(),
            subject: inc.target_id.to_string(),
            state: worst.as_str().to_owned(),
            opened_ms: inc.opened_ms,
            closed_ms: inc.closed_ms,
            band_to_ms: inc.closed_ms.unwrap_or(to_ms).max(inc.opened_ms),
        }
    }

    fn band(&self) -> Band<'_> {
        Band {
            id: &self.id,
            label: format!(
                "{} {} {} ({})",
                self.id, self.scope, self.subject, self.state
            ),
            from_ms: self.opened_ms,
            to_ms: self.band_to_ms,
        }
    }
}

/// One target's charts' data.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSeries {
    pub target: String,
    pub layer: String,
    pub provider: Option<String>,
    pub step_ms: u64,
    pub points: Vec<Point>,
}

/// Everything `/sites/{site}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct SitePage {
    pub site: String,
    pub isp: Option<String>,
    pub customer: Option<String>,
    pub presence: Option<String>,
    pub verdict: Option<Verdict>,
    pub range: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub incidents: Vec<IncidentRef>,
    pub targets: Vec<TargetSeries>,
}

/// Incidents naming `site` (any scope) that overlap [from, to), oldest first.
fn site_incidents(
    store: &Store,
    site: &str,
    from_ms: u64,
    to_ms: u64,
) -> anyhow::Result<Vec<IncidentRef>> {
    let mut v: Vec<IncidentRef> = store
        .incidents_worst(None, from_ms, to_ms, 500)?
        .iter()
        .filter(|(i, _)| i.sites.iter().any(|s| s.as_str() == site) || i.target_id == site)
        .map(|(i, w)| IncidentRef::of(i, *w, to_ms))
        .collect();
    v.sort_by_key(|i| i.opened_ms);
    Ok(v)
}

/// The site page's data; `None` when neither the engine nor history knows `site`.
pub fn site_page(
    store: &Store,
    snap: &Snapshot,
    site: &str,
    range: &str,
    to_ms: u64,
) -> anyhow::Result<Option<SitePage>> {
    let live = snap
        .sites
        .iter()
        .find(|(id, _)| id.as_str() == site)
        .map(|(_, v)| v);
    if live.is_none() && !store.site_known(site)? {
        return Ok(None);
    }
    let span = RANGES
        .iter()
        .find(|r| r.0 == range)
        .map_or(RANGES[0].1, |r| r.1);
    let from_ms = to_ms.saturating_sub(span);
    let (isp, customer) = match live {
        Some(v) => (v.isp.as_ref().map(|i| i.to_string()), v.customer.clone()),
        None => store.site_identity(site)?.unwrap_or((None, None)),
    };
    let mut targets: BTreeMap<String, (String, Option<String>)> = store
        .site_targets(site)?
        .into_iter()
        .map(|(t, l, p)| (t, (l, p)))
        .collect();
    for t in live.iter().flat_map(|v| v.targets.iter()) {
        targets.entry(t.target.to_string()).or_insert_with(|| {
            (
                t.layer.as_str().to_owned(),
                t.provider.as_ref().map(|p| p.to_string()),
            )
        });
    }
    let mut series = Vec::new();
    for (target, (layer, provider)) in targets {
        let rows = store.series(site, &target, from_ms, to_ms)?;
        let (step_ms, points) = buckets(&rows, from_ms, to_ms, MAX_POINTS);
        series.push(TargetSeries {
            target,
            layer,
            provider,
            step_ms,
            points,
        });
    }
    let key = faultline_shared::Id::new(site).ok();
    Ok(Some(SitePage {
        site: site.to_owned(),
        isp,
        customer,
        presence: live.map(|v| match v.presence {
            crate::engine::Presence::Online => "online".to_owned(),
            crate::engine::Presence::Offline { .. } => "offline".to_owned(),
        }),
        verdict: key.and_then(|k| snap.site_verdicts.get(&k).cloned()),
        range: RANGES
            .iter()
            .find(|r| r.0 == range)
            .map_or(RANGES[0].0, |r| r.0)
            .to_owned(),
        from_ms,
        to_ms,
        incidents: site_incidents(store, site, from_ms, to_ms)?,
        targets: series,
    }))
}

fn site_link(s: &str) -> String {
    format!("<a href=\"/sites/{}\">{}</a>", seg(s), esc(s))
}

fn incident_link(id: &str) -> String {
    format!("<a href=\"/incidents/{}\">{}</a>", seg(id), esc(id))
}

/// A link to the page of what an incident or verdict is about.
fn subject_link(scope: &str, subject: &str) -> String {
    match scope {
        "site" => site_link(subject),
        "provider" => format!(
            "<a href=\"/providers/{}\">{}</a>",
            seg(subject),
            esc(subject)
        ),
        "route" => match subject.split_once('~') {
            Some((isp, p)) => format!(
                "{}~<a href=\"/providers/{}\">{}</a>",
                esc(isp),
                seg(p),
                esc(p)
            ),
            None => esc(subject),
        },
        _ => esc(subject),
    }
}

fn incidents_table(list: &[IncidentRef]) -> String {
    if list.is_empty() {
        return "<p class=\"muted\">none in this period</p>".to_owned();
    }
    let mut o = String::from(
        "<table><tr><th>incident</th><th>about</th><th>worst</th><th>from</th><th>to</th><th>lasted</th></tr>",
    );
    for i in list {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            incident_link(&i.id),
            esc(&i.scope),
            subject_link(&i.scope, &i.subject),
            pill(&i.state),
            utc(i.opened_ms),
            i.closed_ms.map_or("open".to_owned(), utc),
            dur(i.band_to_ms - i.opened_ms)
        );
    }
    o.push_str("</table>");
    o
}

/// The four charts of one target.
fn target_charts(t: &TargetSeries, from_ms: u64, to_ms: u64, bands: &[Band<'_>]) -> String {
    let pts = |f: fn(&Point) -> Option<f64>| -> Vec<(u64, Option<f64>)> {
        // A bucket with no value breaks the line, as does a missing bucket.
        let mut v = Vec::new();
        let mut last: Option<u64> = None;
        for p in &t.points {
            if last.is_some_and(|l| p.t_ms > l + t.step_ms) {
                v.push((p.t_ms, None));
            }
            v.push((p.t_ms + t.step_ms / 2, f(p)));
            last = Some(p.t_ms);
        }
        v
    };
    let rtt = [
        Line {
            label: "p50",
            class: "s0",
            points: pts(|p| p.rtt_p50_ms),
        },
        Line {
            label: "p95",
            class: "s1",
            points: pts(|p| p.rtt_p95_ms),
        },
    ];
    let jitter = [Line {
        label: "jitter",
        class: "s0",
        points: pts(|p| p.jitter_ms),
    }];
    let loss = [Line {
        label: "loss",
        class: "s1",
        points: pts(|p| p.loss.map(|l| l * 100.0)),
    }];
    let mos = [Line {
        label: "MOS",
        class: "s0",
        points: pts(|p| p.mos),
    }];
    let mut o = String::from("<div class=\"charts\">");
    o += &chart::svg(
        "RTT p50 / p95",
        "ms",
        from_ms,
        to_ms,
        Scale::ZeroToMax,
        &rtt,
        bands,
    );
    o += &chart::svg(
        "Jitter",
        "ms",
        from_ms,
        to_ms,
        Scale::ZeroToMax,
        &jitter,
        bands,
    );
    o += &chart::svg("Loss", "%", from_ms, to_ms, Scale::ZeroToMax, &loss, bands);
    if t.points.iter().any(|p| p.mos.is_some()) {
        o += &chart::svg(
            "MOS",
            "",
            from_ms,
            to_ms,
            Scale::Fixed(1.0, 4.5),
            &mos,
            bands,
        );
    }
    o.push_str("</div>");
    o
}

/// The site page as HTML.
pub fn site_html(p: &SitePage) -> String {
    let mut b = String::new();
    let state = p.verdict.as_ref().map_or("ok", |v| v.state.as_str());
    let cause = p
        .verdict
        .as_ref()
        .filter(|v| !v.state.is_ok())
        .map(|v| {
            format!(
                " · {}{}",
                v.cause.map_or("", |c| c.as_str()),
                v.provider.as_ref().map_or(String::new(), |x| format!(
                    " {}",
                    subject_link("provider", x.as_str())
                ))
            )
        })
        .unwrap_or_default();
    let _ = write!(
        b,
        "<section><h2>Site {}</h2><p>{}{}{} · ISP {} · customer {} · {}</p>",
        esc(&p.site),
        pill(state),
        cause,
        maintenance_note(p.verdict.as_ref()),
        esc(p.isp.as_deref().unwrap_or("?")),
        esc(p.customer.as_deref().unwrap_or("?")),
        esc(p
            .presence
            .as_deref()
            .unwrap_or("not reporting since the collector started"))
    );
    b.push_str("<nav>");
    for (r, _) in RANGES {
        let _ = write!(
            b,
            "<a href=\"?range={r}\"{}>{r}</a>",
            if r == p.range { " class=\"on\"" } else { "" }
        );
    }
    let _ = write!(
        b,
        "<span class=\"muted\">{} .. {} (UTC)</span></nav></section>",
        utc(p.from_ms),
        utc(p.to_ms)
    );
    let _ = write!(
        b,
        "<section><h2>Incidents</h2>{}</section>",
        incidents_table(&p.incidents)
    );
    let bands: Vec<Band<'_>> = p.incidents.iter().map(IncidentRef::band).collect();
    if p.targets.is_empty() {
        b.push_str("<section><p class=\"muted\">No measurements in history yet.</p></section>");
    }
    for t in &p.targets {
        let _ = write!(
            b,
            "<section class=\"target\" data-target=\"{}\"><h2>{} <span class=\"muted\">{}{}</span></h2>{}</section>",
            esc(&t.target),
            esc(&t.target),
            esc(&t.layer),
            t.provider.as_ref().map_or(String::new(), |x| format!(
                " · {}",
                subject_link("provider", x)
            )),
            target_charts(t, p.from_ms, p.to_ms, &bands)
        );
    }
    page(&format!("site {}", p.site), &b)
}

/// One site's view of a provider now.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderSite {
    pub site: String,
    pub isp: Option<String>,
    pub health: String,
}

/// Everything `/providers/{id}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderPage {
    pub provider: String,
    pub verdict: Option<Verdict>,
    pub since: String,
    pub availability: Availability,
    pub sites: Vec<ProviderSite>,
}

/// The provider page's data over [now − since, now); `None` when unknown.
pub fn provider_page(
    store: &Store,
    snap: &Snapshot,
    provider: &str,
    since: &str,
    now_ms: u64,
    windows: &[crate::maintenance::Window],
) -> anyhow::Result<Option<ProviderPage>> {
    let span = report::parse_span(since).map_err(anyhow::Error::msg)?;
    let from_ms = now_ms.saturating_sub(span);
    let verdict = snap.providers.iter().find(|v| v.id == provider).cloned();
    let mut sites = Vec::new();
    for (id, s) in snap.sites() {
        for p in s.health.iter().flat_map(|h| &h.providers) {
            if p.provider.as_str() == provider {
                sites.push(ProviderSite {
                    site: id.to_string(),
                    isp: s.isp.as_ref().map(|i| i.to_string()),
                    health: serde_json::to_value(p.health)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                });
            }
        }
    }
    let availability = report::availability(store, from_ms, now_ms, Some(provider), windows)?
        .into_iter()
        .next();
    let availability = match availability {
        Some(a) => a,
        None if verdict.is_some() || !sites.is_empty() => Availability {
            provider: provider.to_owned(),
            from_ms,
            to_ms: now_ms,
            sites: 0,
            site_ms: 0,
            affected_site_ms: 0,
            availability: 1.0,
            outages: vec![],
            routes: vec![],
            maintenance: vec![],
        },
        None => return Ok(None),
    };
    Ok(Some(ProviderPage {
        provider: provider.to_owned(),
        verdict,
        since: since.to_owned(),
        availability,
        sites,
    }))
}

/// The provider page as HTML.
pub fn provider_html(p: &ProviderPage) -> String {
    let a = &p.availability;
    let mut b = String::new();
    let state = p.verdict.as_ref().map_or("ok", |v| v.state.as_str());
    let _ = write!(
        b,
        "<section><h2>Provider {}</h2><p>{}{}{}</p>",
        esc(&p.provider),
        pill(state),
        maintenance_note(p.verdict.as_ref()),
        p.verdict
            .as_ref()
            .and_then(|v| v.recommendation.as_ref())
            .map_or(String::new(), |r| format!(
                " · fail over to {}",
                esc(r.to.as_str())
            ))
    );
    b.push_str("<form method=\"get\"><label>Period <select name=\"since\">");
    for s in ["1h", "24h", "7d", "30d", "90d"] {
        let _ = write!(
            b,
            "<option{}>{s}</option>",
            if s == p.since { " selected" } else { "" }
        );
    }
    let _ = write!(
        b,
        "</select></label> <button type=\"submit\">show</button></form>\
         <p><span class=\"big\" id=\"availability\">{:.3} %</span> available over {} .. {} (UTC), \
         {} sites, {} watched site-hours, {} affected. \
         <a href=\"/providers/{}/availability.csv?since={}\">CSV</a></p>\
         <p class=\"muted\">The same numbers as <code>faultline-collector report --since {}</code>: a site counts only while it reports.</p></section>",
        a.availability * 100.0,
        utc(a.from_ms),
        utc(a.to_ms),
        a.sites,
        format_args!("{:.1}", a.site_ms as f64 / 3_600_000.0),
        dur(a.affected_site_ms),
        seg(&p.provider),
        esc(&p.since),
        esc(&p.since),
    );
    b.push_str("<section><h2>Outages</h2>");
    if a.outages.is_empty() && a.routes.is_empty() {
        b.push_str("<p class=\"muted\">none in this period</p>");
    } else {
        b.push_str("<table><tr><th>incident</th><th>worst</th><th>from</th><th>to</th><th>lasted</th><th>sites</th></tr>");
        for (o, route) in a
            .outages
            .iter()
            .map(|o| (o, None))
            .chain(a.routes.iter().map(|r| (&r.outage, Some(&r.isp))))
        {
            let _ = write!(
                b,
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                incident_link(&o.incident),
                route.map_or(String::new(), |isp| format!(
                    " <span class=\"muted\">route from {} (not counted)</span>",
                    esc(isp)
                )),
                pill(&o.state),
                utc(o.start_ms),
                o.end_ms.map_or("open".to_owned(), utc),
                dur(o.duration_ms),
                o.sites
                    .iter()
                    .map(|s| site_link(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        b.push_str("</table>");
    }
    if !a.maintenance.is_empty() {
        b.push_str("<h3>Maintenance (not counted)</h3><table><tr><th>from</th><th>to</th><th>lasted</th><th>note</th></tr>");
        for m in &a.maintenance {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                utc(m.from_ms),
                utc(m.to_ms),
                dur(m.to_ms - m.from_ms),
                esc(m.note.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</section><section><h2>Sites probing it now</h2>");
    if p.sites.is_empty() {
        b.push_str("<p class=\"muted\">none reporting</p>");
    } else {
        b.push_str("<table><tr><th>site</th><th>ISP</th><th>sees it</th></tr>");
        for s in &p.sites {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                site_link(&s.site),
                esc(s.isp.as_deref().unwrap_or("")),
                pill(&s.health)
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</section>");
    page(&format!("provider {}", p.provider), &b)
}

/// What one affected site measured when the incident opened.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub site: String,
    /// Per target: its latest window at or before the opening.
    pub targets: Vec<(String, SeriesRow)>,
}

/// Everything `/incidents/{id}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentPage {
    pub incident: Incident,
    pub worst: String,
    /// The verdict changes of its subject from its opening to its close.
    pub timeline: Vec<Verdict>,
    /// The affected sites' own verdict changes around the opening.
    pub site_changes: Vec<Verdict>,
    pub evidence: Vec<Evidence>,
}

/// How far before the opening the evidence looks.
const EVIDENCE_MS: u64 = 120_000;

/// The incident page's data; `None` when history has no such incident.
pub fn incident_page(
    store: &Store,
    snap: &Snapshot,
    id: &str,
    now_ms: u64,
) -> anyhow::Result<Option<IncidentPage>> {
    let found = match store.incident_by_id(id)? {
        Some(x) => Some(x),
        None => snap
            .open_incidents
            .iter()
            .find(|i| i.id == id)
            .map(|i| (i.clone(), i.state)),
    };
    let Some((inc, worst)) = found else {
        return Ok(None);
    };
    let end = inc.closed_ms.unwrap_or(now_ms);
    let timeline = store.changes(
        inc.scope.as_str(),
        Some(inc.target_id.as_str()),
        inc.opened_ms.saturating_sub(EVIDENCE_MS),
        end,
        500,
    )?;
    let names: Vec<&str> = inc.sites.iter().map(|s| s.as_str()).collect();
    let site_changes = store
        .changes(
            "site",
            None,
            inc.opened_ms.saturating_sub(EVIDENCE_MS),
            inc.opened_ms + 1,
            5000,
        )?
        .into_iter()
        .filter(|v| names.contains(&v.id.as_str()))
        .collect();
    let mut evidence = Vec::new();
    for site in names.iter().take(20) {
        let mut targets = Vec::new();
        for (t, _, _) in store.site_targets(site)? {
            let rows = store.series(
                site,
                &t,
                inc.opened_ms.saturating_sub(EVIDENCE_MS),
                inc.opened_ms + 1,
            )?;
            if let Some(r) = rows.last() {
                targets.push((t, r.clone()));
            }
        }
        evidence.push(Evidence {
            site: (*site).to_owned(),
            targets,
        });
    }
    Ok(Some(IncidentPage {
        worst: worst.as_str().to_owned(),
        incident: inc,
        timeline,
        site_changes,
        evidence,
    }))
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.1}{unit}"))
}

/// The incident page as HTML.
pub fn incident_html(p: &IncidentPage, now_ms: u64) -> String {
    let i = &p.incident;
    let mut b = String::new();
    let end = i.closed_ms.unwrap_or(now_ms);
    let _ =
        write!(
        b,
        "<section><h2>Incident {}</h2><p>{} {} · worst {} · now {} · cause {}</p>\
         <p>{} .. {} ({}{})</p><p>Affected sites: {}</p></section>",
        esc(&i.id),
        esc(i.scope.as_str()),
        subject_link(i.scope.as_str(), i.target_id.as_str()),
        pill(&p.worst),
        pill(if i.closed_ms.is_some() { "ok" } else { i.state.as_str() }),
        esc(i.cause.map_or("–", |c| c.as_str())),
        utc(i.opened_ms),
        i.closed_ms.map_or("open".to_owned(), utc),
        dur(end.saturating_sub(i.opened_ms)),
        if i.closed_ms.is_none() { " so far" } else { "" },
        i.sites.iter().map(|s| format!(
            "{} <a class=\"muted\" href=\"/sites/{}?range=24h&amp;to_ms={}\">(charts then)</a>",
            site_link(s.as_str()),
            seg(s.as_str()),
            (end + 3_600_000).min(now_ms.max(i.opened_ms))
        )).collect::<Vec<_>>().join(", ")
    );
    b.push_str("<section><h2>Timeline</h2><table><tr><th>when</th><th>state</th><th>cause</th><th>sites</th><th>advice</th></tr>");
    for v in &p.timeline {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            utc(v.at_ms),
            pill(v.state.as_str()),
            esc(v.cause.map_or("", |c| c.as_str())),
            v.sites
                .iter()
                .map(|s| site_link(s.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            v.recommendation.as_ref().map_or(String::new(), |r| format!(
                "fail over to {}",
                esc(r.to.as_str())
            ))
        );
    }
    b.push_str("</table></section><section><h2>Evidence that opened it</h2>");
    if !p.site_changes.is_empty() {
        b.push_str("<h3>Site verdicts before the opening</h3><table><tr><th>when</th><th>site</th><th>state</th><th>cause</th></tr>");
        for v in &p.site_changes {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                utc(v.at_ms),
                site_link(v.id.as_str()),
                pill(v.state.as_str()),
                esc(v.cause.map_or("", |c| c.as_str())),
                v.provider
                    .as_ref()
                    .map_or(String::new(), |x| format!(" {}", esc(x.as_str())))
            );
        }
        b.push_str("</table>");
    }
    for e in &p.evidence {
        let _ = write!(
            b,
            "<h3>{} at the opening</h3><table><tr><th>target</th><th>window</th><th>loss</th><th>RTT p50</th><th>p95</th><th>jitter</th><th>MOS</th></tr>",
            site_link(&e.site)
        );
        for (t, r) in &e.targets {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{:.1} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(t),
                utc(r.at_ms),
                r.loss * 100.0,
                opt(r.rtt_p50_ms, " ms"),
                opt(r.rtt_p95_ms, " ms"),
                opt(r.jitter_ms, " ms"),
                opt(r.mos, "")
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</section>");
    page(&format!("incident {}", i.id), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at_ms: u64, p50: f64, loss: f64) -> SeriesRow {
        SeriesRow {
            at_ms,
            windows: 1,
            rtt_p50_ms: Some(p50),
            rtt_p95_ms: Some(p50 * 2.0),
            jitter_ms: None,
            loss,
            mos: Some(4.0 - loss),
        }
    }

    #[test]
    fn buckets_average_the_median_and_keep_the_worst() {
        let rows = [
            row(0, 10.0, 0.0),
            row(5, 20.0, 0.5),
            row(10, 30.0, 0.0),
            row(99, 1.0, 0.0),
        ];
        let (step, p) = buckets(&rows, 0, 100, 10);
        assert_eq!(step, 10);
        assert_eq!(p.len(), 3, "empty buckets are left out");
        assert_eq!(p[0].rtt_p50_ms, Some(15.0));
        assert_eq!(p[0].rtt_p95_ms, Some(40.0));
        assert_eq!(p[0].loss, Some(0.5));
        assert_eq!(p[0].mos, Some(3.5));
        assert_eq!(p[0].jitter_ms, None);
        assert_eq!(p[2].t_ms, 90);
    }

    #[test]
    fn text_is_escaped_and_pages_carry_the_shared_style() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        let p = not_found("No site \"<x>\"");
        assert!(p.contains("No site &quot;&lt;x&gt;&quot;"));
        assert!(p.contains(STYLE));
        assert!(!p.contains("<script"));
    }
}
