//! Charts as server-side SVG: a time axis, one or two lines, incident periods as
//! shaded bands. No script and no style attributes (the CSP admits neither); the
//! page's style block colours them by class. It draws; it does not query.

use std::fmt::Write as _;

/// Drawing area inside the SVG's `viewBox`.
const W: f64 = 600.0;
const H: f64 = 150.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 592.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 128.0;

/// One line: its CSS class and (time, value) points in time order; `None` breaks
/// the line (no data there).
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub label: &'a str,
    pub class: &'a str,
    pub points: Vec<(u64, Option<f64>)>,
}

/// A shaded period: an incident.
#[derive(Debug, Clone)]
pub struct Band<'a> {
    pub id: &'a str,
    pub label: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The value axis: fixed bounds, or from 0 to the data's maximum.
#[derive(Debug, Clone, Copy)]
pub enum Scale {
    Fixed(f64, f64),
    ZeroToMax,
}

/// The x position of `t` in [from, to].
pub fn x_of(t: u64, from_ms: u64, to_ms: u64) -> f64 {
    let span = to_ms.saturating_sub(from_ms).max(1) as f64;
    let f = (t.clamp(from_ms, to_ms) - from_ms) as f64 / span;
    LEFT + f * (RIGHT - LEFT)
}

fn esc(s: &str) -> String {
    super::pages::esc(s)
}

fn num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One chart over [from, to): `title` names it, `unit` labels its values.
pub fn svg(
    title: &str,
    unit: &str,
    from_ms: u64,
    to_ms: u64,
    scale: Scale,
    lines: &[Line<'_>],
    bands: &[Band<'_>],
) -> String {
    let values = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1))
        .filter(|v| v.is_finite());
    let (lo, hi) = match scale {
        Scale::Fixed(lo, hi) => (lo, hi),
        Scale::ZeroToMax => {
            let max = values.fold(0.0f64, f64::max);
            (0.0, if max > 0.0 { max * 1.1 } else { 1.0 })
        }
    };
    let y_of = |v: f64| BOTTOM - (v.clamp(lo, hi) - lo) / (hi - lo).max(1e-9) * (BOTTOM - TOP);
    let drawn: usize = lines
        .iter()
        .map(|l| l.points.iter().filter(|p| p.1.is_some()).count())
        .sum();
    let mut o = String::new();
    let _ = write!(
        o,
        "<figure class=\"chart\"><figcaption>{}</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" data-points=\"{drawn}\" \
         data-from-ms=\"{from_ms}\" data-to-ms=\"{to_ms}\">",
        esc(title),
        esc(title)
    );
    for b in bands {
        if b.to_ms <= from_ms || b.from_ms >= to_ms {
            continue;
        }
        let (x0, x1) = (
            x_of(b.from_ms, from_ms, to_ms),
            x_of(b.to_ms, from_ms, to_ms),
        );
        let _ = write!(
            o,
            "<rect class=\"band\" data-incident=\"{}\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\"><title>{}</title></rect>",
            esc(b.id),
            (x1 - x0).max(1.0),
            BOTTOM - TOP,
            esc(&b.label)
        );
    }
    // Frame, the value axis's bounds and the time axis's ends.
    let _ = write!(
        o,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{RIGHT}\" y2=\"{BOTTOM}\"/>\
         <line class=\"grid\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{RIGHT}\" y2=\"{TOP}\"/>\
         <text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text class=\"tick\" x=\"{}\" y=\"{BOTTOM}\" text-anchor=\"end\">{}</text>\
         <text class=\"tick\" x=\"{LEFT}\" y=\"{}\">{}</text>\
         <text class=\"tick\" x=\"{RIGHT}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        LEFT - 4.0,
        TOP + 8.0,
        esc(&format!("{} {unit}", num(hi))),
        LEFT - 4.0,
        esc(&num(lo)),
        H - 6.0,
        esc(&time_label(from_ms, to_ms - from_ms)),
        H - 6.0,
        esc(&time_label(to_ms, to_ms - from_ms)),
    );
    for l in lines {
        let mut segment: Vec<(f64, f64)> = Vec::new();
        let flush = |seg: &mut Vec<(f64, f64)>, o: &mut String| {
            match seg.len() {
                0 => {}
                1 => {
                    let _ = write!(
                        o,
                        "<circle class=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\"/>",
                        l.class, seg[0].0, seg[0].1
                    );
                }
                _ => {
                    let pts: Vec<String> =
                        seg.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                    let _ = write!(
                        o,
                        "<polyline class=\"{}\" points=\"{}\"/>",
                        l.class,
                        pts.join(" ")
                    );
                }
            }
            seg.clear();
        };
        for &(t, v) in &l.points {
            match v.filter(|v| v.is_finite()) {
                Some(v) => segment.push((x_of(t, from_ms, to_ms), y_of(v))),
                None => flush(&mut segment, &mut o),
            }
        }
        flush(&mut segment, &mut o);
    }
    o.push_str("</svg>");
    if lines.len() > 1 {
        o.push_str("<div class=\"legend\">");
        for l in lines {
            let _ = write!(o, "<span class=\"key {}\">{}</span>", l.class, esc(l.label));
        }
        o.push_str("</div>");
    }
    o.push_str("</figure>");
    o
}

/// `ms` as a label: the time of day for spans up to a day, the date beyond (UTC).
fn time_label(ms: u64, span_ms: u64) -> String {
    let full = crate::report::utc(ms);
    if span_ms <= 86_400_000 {
        full.get(11..16).map_or(full.clone(), |t| format!("{t}Z"))
    } else {
        full.get(5..16).map_or(full.clone(), |t| format!("{t}Z"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_points_gaps_and_bands_where_they_belong() {
        let line = Line {
            label: "p50",
            class: "s0",
            points: vec![(0, Some(1.0)), (10, Some(2.0)), (20, None), (30, Some(3.0))],
        };
        let band = Band {
            id: "inc-000001",
            label: "outage".into(),
            from_ms: 50,
            to_ms: 75,
        };
        let s = svg("RTT", "ms", 0, 100, Scale::ZeroToMax, &[line], &[band]);
        assert!(s.contains("data-points=\"3\""), "{s}");
        assert_eq!(s.matches("<polyline").count(), 1, "a gap splits the line");
        assert_eq!(s.matches("<circle").count(), 1, "a lone point is a dot");
        // The band spans half to three quarters of the plot's width.
        let x0 = LEFT + 0.5 * (RIGHT - LEFT);
        assert!(s.contains(&format!("x=\"{x0:.1}\"")), "{s}");
        assert!(!s.contains("style="), "the CSP admits no style attributes");
        // A band outside the range is not drawn.
        let far = Band {
            id: "x",
            label: String::new(),
            from_ms: 200,
            to_ms: 300,
        };
        assert!(!svg("t", "", 0, 100, Scale::Fixed(1.0, 4.5), &[], &[far]).contains("band"));
    }
}
