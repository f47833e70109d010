"""When a schedule fires: cron expressions (parsed by Celery's crontab) and fixed intervals.

Cron fields are minute, hour, day of month, month, day of week (0 or "sun" is Sunday), read
in the schedule's time zone; as in Celery, a day must match both the day of month and the
day of week. Interval ticks fall on whole multiples of the interval since the Unix epoch, so
every process computes the same tick times.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

LOOK_AHEAD_DAYS = 5 * 366  # a cron expression that matches no day in this span never fires


class BadTiming(ValueError):
    """A cron expression, interval or time zone that cannot be used."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadTiming(f"unknown time zone {name!r}") from None


def parse_cron(expression: str) -> crontab:
    fields = expression.split()
    if len(fields) != 5:
        raise BadTiming(f"a cron expression has 5 fields (minute hour day month weekday), got {expression!r}")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except (ValueError, KeyError, IndexError) as exc:
        raise BadTiming(f"cron expression {expression!r}: {exc}") from None


def cron_ticks(
    expression: str, zone_name: str, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """Fire times in (after, until], oldest first, at most `limit`, as UTC datetimes."""
    cron, tz = parse_cron(expression), zone(zone_name)
    found: list[datetime] = []
    day = after.astimezone(tz).date()
    last_day = min(until.astimezone(tz).date(), day + timedelta(days=LOOK_AHEAD_DAYS))
    moments = [time(h, m) for h in sorted(cron.hour) for m in sorted(cron.minute)]
    while day <= last_day and len(found) < limit:
        if _day_matches(cron, day):
            for moment in moments:
                tick = datetime.combine(day, moment, tzinfo=tz).astimezone(UTC)
                if after < tick <= until and tick not in found:
                    found.append(tick)
        day += timedelta(days=1)
    return sorted(found)[:limit]


def _day_matches(cron: crontab, day: date) -> bool:
    weekday = (day.weekday() + 1) % 7  # cron counts from Sunday = 0
    return day.month in cron.month_of_year and day.day in cron.day_of_month and weekday in cron.day_of_week


def interval_ticks(seconds: int, after: datetime, until: datetime, limit: int) -> list[datetime]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = int((after - epoch).total_seconds() // seconds) + 1
    ticks = []
    number = first
    while len(ticks) < limit:
        tick = epoch + timedelta(seconds=number * seconds)
        if tick > until:
            break
        ticks.append(tick)
        number += 1
    return ticks


def latest_interval_tick(seconds: int, until: datetime) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + timedelta(seconds=int((until - epoch).total_seconds() // seconds) * seconds)


def cron_latest(expression: str, zone_name: str, after: datetime, until: datetime) -> datetime | None:
    """The last fire time in (after, until], or None."""
    cron, tz = parse_cron(expression), zone(zone_name)
    day = until.astimezone(tz).date()
    first_day = max(after.astimezone(tz).date(), day - timedelta(days=LOOK_AHEAD_DAYS))
    moments = [time(h, m) for h in sorted(cron.hour, reverse=True) for m in sorted(cron.minute, reverse=True)]
    while day >= first_day:
        if _day_matches(cron, day):
            for moment in moments:
                tick = datetime.combine(day, moment, tzinfo=tz).astimezone(UTC)
                if after < tick <= until:
                    return tick
        day -= timedelta(days=1)
    return None
