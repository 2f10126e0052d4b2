//! Drawing `enforcer top`: the agent line, connections per library and verdict (totals and per
//! second), the newest violations, drops and ring-buffer losses, and the keys.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table},
};

use super::model::{Counter, Model};

fn verdict_style(verdict: &str) -> Style {
    match verdict {
        "allowed" => Style::new().fg(Color::Green),
        "blocked" | "blocklist-full" => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        "would-block" => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    }
}

fn rate(c: Counter) -> String {
    format!("{:.1}/s", c.per_s)
}

fn header_style() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

pub fn draw(frame: &mut Frame, model: &Model) {
    let rows = model.rows.len().clamp(1, 12) as u16;
    let [top, connections, violations, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(rows + 3),
        Constraint::Min(4),
        Constraint::Length(3),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(agent_line(model)), top);
    draw_connections(frame, model, connections);
    draw_violations(frame, model, violations);
    frame.render_widget(Paragraph::new(footer(model)), bottom);
}

fn agent_line(model: &Model) -> Line<'static> {
    let a = &model.agent;
    if a.pid == 0 {
        return Line::from("enforcer top: waiting for the agent's first answer");
    }
    Line::from(vec![
        Span::styled("enforcer top", header_style()),
        Span::raw(format!(
            "  agent pid {}, up {} s, mode {}, kernel hook {}, policy {}",
            a.pid, a.uptime_s, a.mode, a.kernel_hook, a.policy
        )),
    ])
}

fn draw_connections(frame: &mut Frame, model: &Model, area: Rect) {
    let header =
        Row::new(["LIBRARY", "VERDICT", "CONNECTIONS", "PER SECOND"]).style(header_style());
    let rows = model.rows.iter().map(|r| {
        Row::new([
            Cell::from(r.library.clone()),
            Cell::from(r.verdict.clone()).style(verdict_style(&r.verdict)),
            Cell::from(r.count.total.to_string()),
            Cell::from(rate(r.count)),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(20),
        Constraint::Length(12),
        Constraint::Length(12),
    ];
    let title = match model.rows.is_empty() {
        true => " Connections since start: none yet ".to_owned(),
        false => " Connections since start, by library and verdict ".to_owned(),
    };
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        area,
    );
}

fn draw_violations(frame: &mut Frame, model: &Model, area: Rect) {
    let header = Row::new([
        "TIME", "PROCESS", "PID", "LIBRARY", "VERSION", "LOCAL", "REMOTE", "VERDICT",
    ])
    .style(header_style());
    let rows = model.violations.iter().map(|v| {
        Row::new([
            Cell::from(v.time.clone()),
            Cell::from(v.comm.clone()),
            Cell::from(v.pid.to_string()),
            Cell::from(v.library.clone()),
            Cell::from(v.version.clone()),
            Cell::from(v.local.clone()),
            Cell::from(v.remote.clone()),
            Cell::from(v.verdict.clone()).style(verdict_style(&v.verdict)),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(15),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Min(16),
        Constraint::Min(16),
        Constraint::Length(14),
    ];
    let title = format!(
        " Newest violations ({} since start, {}) ",
        model.violations_total.total,
        rate(model.violations_total)
    );
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        area,
    );
}

fn footer(model: &Model) -> Vec<Line<'static>> {
    let interfaces = match model.agent.interfaces.is_empty() {
        true => "?".to_owned(),
        false => model.agent.interfaces.join(", "),
    };
    let drops = format!(
        "drops on {interfaces}: ingress (XDP or tc) {} ({}), egress (tc) {} ({})",
        model.ingress_drops.total,
        rate(model.ingress_drops),
        model.tc_drops.total,
        rate(model.tc_drops)
    );
    let losses = format!(
        "ring-buffer losses: connection events {} ({}), hello events {} ({})",
        model.events_lost.total,
        rate(model.events_lost),
        model.hello_events_lost.total,
        rate(model.hello_events_lost)
    );
    let lost = model.events_lost.total + model.hello_events_lost.total > 0;
    let keys = match &model.error {
        Some(err) => Line::from(vec![
            Span::styled(
                format!("agent not answering: {err}"),
                Style::new().fg(Color::Red),
            ),
            Span::raw("  (q: quit)"),
        ]),
        None => Line::from("q: quit, any other key: refresh now"),
    };
    vec![
        Line::from(drops),
        Line::styled(
            losses,
            match lost {
                true => Style::new().fg(Color::Yellow),
                false => Style::new(),
            },
        ),
        keys,
    ]
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};
    use serde_json::json;

    use super::*;
    use crate::commands::top::model::Sample;

    fn screen(model: &Model, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, model)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn model() -> Model {
        let status = json!({"pid": 4242, "uptime_s": 65, "mode": "enforce",
                            "policy": "/etc/enforcer/policy.yaml", "interfaces": ["veth-h"],
                            "kernel_hook": "fentry",
                            "counters": {"xdp_drops": 3, "tc_drops": 7, "events_lost": 0,
                                         "hello_events_lost": 2}});
        let recent = json!({"connections": [
                {"library": "openssl", "verdict": "allowed", "count": 12},
                {"library": "gnutls", "verdict": "blocked", "count": 1}],
            "violations": [{"time": "2026-12-03T10:11:12.345Z", "pid": 31337,
                "comm": "gnutls-cli",
                "library": {"family": "gnutls", "version": "3.7.9"},
                "local": {"addr": "10.99.0.1", "port": 43240},
                "remote": {"addr": "10.99.0.2", "port": 8443}, "verdict": "blocked"}],
            "violations_total": 1});
        let mut m = Model::default();
        m.observe(Sample::from_answers(&status, &recent), 1.0);
        m
    }

    #[test]
    fn shows_connections_violations_drops_and_losses() {
        let text = screen(&model(), 120, 24);
        for needle in [
            "agent pid 4242, up 65 s, mode enforce",
            "openssl",
            "allowed",
            "12",
            "gnutls-cli",
            "31337",
            "3.7.9",
            "10.99.0.1:43240",
            "10.99.0.2:8443",
            "blocked",
            "1 since start",
            "drops on veth-h: ingress (XDP or tc) 3 (0.0/s), egress (tc) 7 (0.0/s)",
            "hello events 2",
            "q: quit",
        ] {
            assert!(
                text.contains(needle),
                "no {needle:?} on the screen:\n{text}"
            );
        }
    }

    #[test]
    fn an_empty_model_and_a_tiny_terminal_draw_without_panic() {
        let text = screen(&Model::default(), 120, 24);
        assert!(text.contains("waiting for the agent"), "{text}");
        assert!(text.contains("none yet"), "{text}");
        for (w, h) in [(1, 1), (10, 3), (40, 8)] {
            screen(&model(), w, h);
        }
    }

    #[test]
    fn a_failed_poll_is_on_the_screen() {
        let mut m = model();
        m.failed("connection refused".into());
        let text = screen(&m, 120, 24);
        assert!(
            text.contains("agent not answering: connection refused"),
            "{text}"
        );
        assert!(text.contains("gnutls-cli"), "the last data stays:\n{text}");
    }
}
